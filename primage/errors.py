"""Error types shared by the engine, the command line and the Slicer modules."""


class PrimageInputError(ValueError):
    """A user mistake (bad path, wrong dimension, bad parameter).

    The command line prints the message as one line and exits with code 2;
    Slicer modules show it in an error dialog. The message must say what is wrong
    and, where possible, how to fix it.
    """
