"""How a run goes live over a fleet: the batches of hosts the switch and
reload go in, and how many hosts may fail before the run stops.

Sizes are counted as Ansible's `serial` counts them, which people who run
fleets know: a number of hosts, or a percentage of all of them rounded
down (at least 1), the last size repeated until every host has had its
turn. Unlike Ansible's `max_fail_percentage`, which is counted per batch,
the failure budget is counted over the whole run: three batches that each
lose one host of ten have lost three.
"""


def count(size: int | str, hosts: int) -> int:
    """A size as targets.yaml writes it (3, or "25%"), in hosts out of `hosts`."""
    if isinstance(size, str):
        return int(size.removesuffix("%")) * hosts // 100
    return size


def batches(hosts: tuple[str, ...], sizes: tuple[int | str, ...]) -> tuple[tuple[str, ...], ...]:
    """`hosts`, in their order, cut into batches of `sizes`: the first host
    (the lock's and migrate's) is in the first batch."""
    out, at = [], 0
    for i in range(len(hosts)):
        if at >= len(hosts):
            break
        size = max(1, count(sizes[min(i, len(sizes) - 1)], len(hosts)))
        out.append(hosts[at:at + size])
        at += size
    return tuple(out)


def budget(max_failed: int | str, hosts: int) -> int:
    """How many of `hosts` may fail in one run (max_failed: 0, 2 or "10%"):
    never the first, which holds the lock."""
    return max(0, min(count(max_failed, hosts), hosts - 1))
