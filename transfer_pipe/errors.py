"""The one error type a user sees: what went wrong and what to do about it."""


class TransferPipeError(Exception):
    """A problem the user can fix (bad path, unknown backbone, unwritable store...).

    The CLI prints the message as one paragraph and exits non-zero, without a traceback.
    Messages name the fix, e.g. "... pass --weights-file PATH".
    """
