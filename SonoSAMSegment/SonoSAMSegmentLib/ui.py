"""What both SonoSAM modules' Qt layers share (kept here, beside the logic, so there is one copy)."""

import contextlib
import logging


@contextlib.contextmanager
def showErrors(message):
    """Show an error once: ``slicer.util.tryWithErrorDisplay`` displays it (message + details), then
    re-raises it, which would print a second traceback from the Qt slot; here it is logged and dropped."""
    import slicer.util

    try:
        with slicer.util.tryWithErrorDisplay(message, waitCursor=False):
            yield
    except Exception as error:  # already displayed with its details
        logging.info(f"SonoSAM: {message} {error}")
