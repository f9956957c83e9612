"""``statebag bench``: statebag against restic, borg, casync and bup on the same states.

:mod:`.workloads` generates the states (seeded) or reads the user's own, :mod:`.peers`
calls each tool as a pipeline would, :mod:`.runner` runs a workload through every tool and
measures it, and :mod:`.report` turns the figures into the JSON document and the markdown
table. ``statebag bench --help`` says what is measured and how.
"""
