"""PLACEHOLDER (to be replaced by the issue that builds it): registers nothing yet."""

from pactframe import hookimpl


@hookimpl
def pactframe_register_preprocessors():
    return []
