"""Exit codes of the ``shekel`` command (``shekel run`` also passes the program's own through)."""

EXIT_OK = 0
#: Something could not be done: a store that cannot be read, an extra that is not installed.
EXIT_ERROR = 1
#: Bad arguments (argparse's own code): a one-line message, no traceback.
EXIT_USAGE = 2
#: ``shekel run``: a ``BudgetExceededError`` escaped the program (the budget stopped it).
EXIT_BUDGET = 3
