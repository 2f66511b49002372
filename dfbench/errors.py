"""Errors that mean "the user asked for something that cannot be done"."""


class DfbenchInputError(ValueError):
    """Bad input from the user (a name, a file, a field). The CLI prints it on one line, exit code 2."""


class UnknownNameError(DfbenchInputError, KeyError):
    """A name that is not registered or not addressable; the message suggests the closest valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""
