"""structlog set-up, called once by each entry point."""

from __future__ import annotations

import logging
import sys


def _without_rich() -> None:
    """Import structlog as if ``rich`` were not installed.

    structlog's ``dev`` and ``tracebacks`` modules, which its package always imports, import
    rich (and pygments, through rich) when they can find it, for console tracebacks: ~0.1 s of
    CPU at every start of every command and daemon (``python -X importtime``). capwatch does
    not depend on rich, so an installed capwatch renders without it; rich is found only where
    something else brought it (a development environment). Hidden while structlog loads, the
    console output is the same wherever capwatch runs, and a start does not pay for it. A
    ``None`` in :data:`sys.modules` makes ``import rich`` raise :class:`ImportError`, which
    structlog catches; afterwards rich is importable again for whoever wants it.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401, PLC0415
    finally:
        del sys.modules["rich"]


_without_rich()

import structlog  # noqa: E402 (after _without_rich, which imported it)

__all__ = ["configure_logging", "get_logger"]


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Console rendering on a terminal, one JSON object per line otherwise (journald, files)."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if use_json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger bound with the component name.

    Lazy, so module-level loggers pick up :func:`configure_logging` even though modules
    are imported before the entry point configures logging.
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
