"""The progress line: counts, bytes, ETA; redraw on a terminal, plain lines in logs."""

from __future__ import annotations

import io

from pactframe.progress import Progress, format_duration


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_log_stream_prints_full_lines_and_a_final_line():
    out = io.StringIO()
    p = Progress(4, 4000, stream=out, log_interval=0.0)
    for i in range(4):
        p.update(f"t{i}", 1000)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in out.getvalue()
    assert "1/4 tensors, 1.00 KB/4.00 KB" in lines[0] and lines[0].endswith("t0")
    assert "4/4 tensors, 4.00 KB/4.00 KB" in lines[-1] and "[####################]" in lines[-1]
    assert lines[-1].endswith("done") and "ETA 0:00" in lines[-1]


def test_terminal_redraws_in_place_and_is_throttled():
    out = _Tty()
    p = Progress(100, 100, stream=out, interval=3600)
    for i in range(100):
        p.update(f"t{i}", 1)
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 2  # the first update, then throttled until close
    assert text.endswith("\n") and "100/100 tensors" in text


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    p = Progress(2, 2, stream=out, enabled=False)
    p.update("a", 1)
    p.close()
    assert out.getvalue() == "" and p.done_tensors == 1


def test_eta_from_byte_rate():
    p = Progress(2, 1000, stream=io.StringIO())
    p.start -= 10.0  # pretend 10 s elapsed
    p.done_bytes = 250
    assert "ETA 0:30" in p.line()  # 25% in 10 s -> 30 s left
    assert format_duration(3725) == "1:02:05" and format_duration(59.6) == "1:00"
