"""A LangGraph checkpointer that stores only what changed: ``StatebagSaver(repo)``.

Install with the extra: ``pip install "statebag[langgraph]"``. The core of statebag never
imports LangGraph; this package does, and uses only statebag's public API.

```python
import statebag
from statebag.langgraph import StatebagSaver

saver = StatebagSaver(statebag.open("state-repo"))
graph = builder.compile(checkpointer=saver)
```

See :class:`StatebagSaver` for how checkpoints are laid out, and the README section "LangGraph
checkpointer" for retention (``prune``, then ``Repository.gc``).
"""

from __future__ import annotations

from .saver import CHAIN_ROOT, StatebagSaver

__all__ = ["CHAIN_ROOT", "StatebagSaver"]
