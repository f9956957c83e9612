"""The ``statebag`` command line: a face over :class:`statebag.Repository`.

Commands: ``init``, ``save``, ``load``, ``log``, ``diff``, ``fork``, ``merge``, ``reset``,
``chains``, ``delete``, ``pin``, ``unpin``, ``hold``, ``merge-base``, ``verify``, ``stats``,
``gc`` and ``audit`` work on the repository named by ``-r/--repo PATH_OR_URL`` (before or
after the command) or, failing that, the ``STATEBAG_REPO`` environment variable; a
``memory://`` URL is refused, since it would not outlive the command. ``demo [DIR]`` runs a
simulated agent workflow in DIR (or in a temporary directory it removes) and reports what
storage cost; ``bench`` compares statebag with restic, borg, casync and bup.

A version is named by its id, a unique prefix of at least 8 hex characters of it, or a
chain name (its newest version); see :meth:`statebag.Repository.resolve`.

Only ``init`` creates a repository and only ``init`` passes configuration options: a
repository records its options at creation, and an open that contradicts them fails.

States travel as JSON (or MessagePack, for a file named ``*.msgpack`` or with ``--format
msgpack``). ``bytes`` values, which JSON lacks, are written by ``load`` as
``{"$base64": "<standard base64>"}`` objects, and ``save`` turns such a one-key object back
into bytes, so a state written by ``load`` saves back unchanged. Floats that are NaN or
infinite are written as the non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity``
(as Python's json module writes and reads them; strict JSON parsers refuse them).

Exit codes: 0 success; 1 an unexpected statebag error; 2 invalid input or usage
(``InvalidInputError``, and argparse's own usage errors); 3 integrity failure (also
``verify`` or ``demo`` finding a problem, and ``audit`` finding danger: something reachable
missing or under-counted, or a broken chain; leaks alone exit 0); 4 conflict (a stale
``--parent``, a chain moved by another writer, a merge conflict, ``fork`` onto an existing
chain); 5 not found; 6 configuration error; 7 backend failure; 8 a write whose outcome is
unknown (``OutcomeUnknown``: it may still land; look before repeating it); 130 interrupted.
Each of 1 to 8 comes from the ``exit_code`` of the error class in :mod:`statebag.errors`.

Durations (``gc --keep-within`` and ``--grace``, ``init --grace``) are a number of seconds or
a number with a unit: ``30s``, ``15m``, ``1h``, ``7d``, ``2w``.

Progress goes to stderr only when stderr is a terminal and neither ``--json`` nor
``--quiet`` is given.
"""

from .demo import DEMO_CHAIN as DEMO_CHAIN
from .entry import main
from .parser import REPO_ENV as REPO_ENV

__all__ = ["main"]
