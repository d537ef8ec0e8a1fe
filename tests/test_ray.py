"""hlsandbox.ray on a real local Ray cluster of two nodes (ray.cluster_utils.Cluster):
one cluster for the module, nodes of one CPU and a small object store. Every wait is
bounded, so a lost call cannot hang the suite."""
import os
import pickle
import threading
import time
from pathlib import Path

import pytest

import hlsandbox as hl

# Before Ray is imported: the nodes and the driver talk over 127.0.0.1 only (without
# this, Ray replaces 127.0.0.1 by the machine's outward address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from hlsandbox.ray import RayPool, SnapshotImage  # noqa: E402

pytestmark = pytest.mark.kvm

NODE = dict(num_cpus=1, object_store_memory=80 * 2**20, node_ip_address="127.0.0.1")
# Half a CPU per actor: two actors fit on one node when the other node is gone.
HALF = {"num_cpus": 0.5}
WAIT = 120  # the longest any test waits for one result
SLOW_N = 6_000_000_000  # Sum(SLOW_N) runs for about 2 s natively


@pytest.fixture(scope="module")
def cluster():
    # Ray's worker processes import the hlsandbox these tests import.
    root = str(Path(hl.__file__).resolve().parent.parent)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + saved if saved else "")
    c = Cluster(initialize_head=True, head_node_args=dict(NODE, include_dashboard=False))
    try:
        c.add_node(**NODE)
        ray.init(address=c.address, log_to_driver=False)
        c.wait_for_nodes(timeout=WAIT)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="module")
def pool(cluster):
    with RayPool(hl.guests.path("simpleguest"), actors=2, actor_options=HALF,
                 host_functions={"HostAdd": (lambda a, b: a + b, (hl.i32, hl.i32), hl.i32)}) as p:
        yield p


def test_calls_spread_over_both_nodes(pool):
    nodes = pool.node_ids()
    assert len(set(nodes)) == 2
    assert list(pool.map("Add", range(40), range(40), wait=WAIT)) == [2 * i for i in range(40)]
    assert list(pool.map("Add", range(41), range(41), wait=WAIT, chunksize=10)) == [2 * i for i in range(41)]
    assert pool.call("CallHostAdd", 20, 22, wait=WAIT) == 42  # a host function, run on the node
    assert ray.get(pool.submit("Echo", "hi"), timeout=WAIT) == "hi"
    calls = [s.calls for s in pool.stats()]
    assert all(c >= 40 for c in calls), calls


def test_every_call_starts_from_the_snapshot(pool):
    assert set(pool.map("SetStatic", [7] * 6, wait=WAIT)) == {7}
    assert [pool.call("GetStatic", wait=WAIT) for _ in range(6)] == [0] * 6


def test_guest_errors_arrive_as_hlsandbox_exceptions(pool):
    with pytest.raises(hl.GuestAborted) as e:
        pool.call("Abort", 9, "bad input", wait=WAIT)
    assert type(e.value) is hl.GuestAborted and e.value.code == 9 and "bad input" in str(e.value)
    with pytest.raises(hl.ExecutionTimeout):
        pool.call("Spin", timeout=0.2, wait=WAIT)
    with pytest.raises(hl.MemoryAccessViolation):
        pool.call("ReadAddress", 0, wait=WAIT)
    with pytest.raises(hl.GuestFunctionNotFound):
        pool.call("NoSuchFunction", wait=WAIT)
    # Through submit(): Ray's wrapper, an instance of the hlsandbox class with it as cause.
    with pytest.raises(hl.GuestAborted) as e:
        ray.get(pool.submit("Abort", 4, "x"), timeout=WAIT)
    assert type(e.value.cause) is hl.GuestAborted and e.value.cause.code == 4
    results = pool.map("Abort", [1, 2], ["a", "b"], wait=WAIT)
    with pytest.raises(hl.GuestAborted):
        next(results)
    results = pool.map("EchoI32", [1, 2, 2**40, 3], wait=WAIT, chunksize=3)  # 2**40: refused by the host
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(hl.GuestFunctionParameterTypeMismatch):
        next(results)
    # The sandboxes were restored: both actors still serve.
    assert list(pool.map("Add", range(4), range(4), wait=WAIT)) == [0, 2, 4, 6]
    assert all(s.replacements == 0 and s.size == 1 for s in pool.stats())


def test_every_hlsandbox_exception_crosses_ray(cluster):
    from test_errors import EXAMPLES  # one instance of every public exception class

    @ray.remote(num_cpus=0)
    def throw(exc):
        raise exc
    for exc in EXAMPLES:
        with pytest.raises(ray.exceptions.RayTaskError) as ei:
            ray.get(throw.remote(exc), timeout=WAIT)
        assert isinstance(ei.value, type(exc))
        assert type(ei.value.cause) is type(exc) and str(ei.value.cause) == str(exc)
        assert ei.value.cause.__dict__ == exc.__dict__


def test_bounded_wait_raises_timeout_error(pool):
    with pytest.raises(TimeoutError):  # ray.exceptions.GetTimeoutError
        pool.call("Sum", SLOW_N, wait=0.05, timeout=2)
    # The call still runs out its guest time limit; the pool is usable after it.
    assert pool.call("Add", 1, 1, wait=WAIT) == 2


def test_snapshot_from_a_path_every_node_reads(cluster, tmp_path):
    with hl.SandboxPool(hl.guests.path("simpleguest"), size=1) as local:
        local.snapshot.save(tmp_path / "guest.hlsnap")
    with RayPool(tmp_path / "guest.hlsnap", actors=2, actor_options=HALF, shared_path=True) as p:
        assert list(p.map("Echo", ["a", "b", "c"], wait=WAIT)) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="snapshot file"):
        RayPool(hl.guests.path("simpleguest"), actors=1, shared_path=True)


def test_a_bad_snapshot_fails_the_constructor(cluster, tmp_path):
    bad = tmp_path / "bad.hlsnap"
    with hl.SandboxPool(hl.guests.path("simpleguest"), size=1) as local:
        local.snapshot.save(bad)
    data = bytearray(bad.read_bytes())
    data[-4096] ^= 0xFF  # inside the memory image: the checksum no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(hl.InvalidSnapshot, match="checksum"):
        RayPool(bad, actors=1, actor_options=HALF, shared_path=True, wait=WAIT)


def test_snapshot_image_keeps_holes_out(tmp_path):
    with hl.SandboxPool(hl.guests.path("simpleguest"), size=1) as local:
        image = SnapshotImage.of(local.snapshot)
        assert sum(len(d) for _, d in image.extents) < image.size // 2
        copy = pickle.loads(pickle.dumps(image))
        with copy.load() as snap, hl.MultiUseSandbox.from_snapshot(snap) as sb:
            assert sb.call("Echo", "again") == "again"


def _kill_node_mid_run(cluster, retries):
    """Two actors on two nodes that are not the head, calls running on both; the node of
    one is removed. Returns the outcome of every call and the pool."""
    extra = cluster.add_node(**NODE)
    cluster.wait_for_nodes(timeout=WAIT)
    head = cluster.head_node.node_id
    p = RayPool(hl.guests.path("simpleguest"), actors=2, actor_options=HALF, retries=retries)
    nodes = p.node_ids()
    victims = [n for n in cluster.worker_nodes if n.node_id in nodes and n.node_id != head]
    victim = victims[0] if victims else extra
    outcomes: list = [None] * 4

    def run(k):
        try:
            outcomes[k] = p.call("Sum", SLOW_N, wait=WAIT)
        except BaseException as e:  # noqa: BLE001 (recorded, checked below)
            outcomes[k] = e
    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]  # two calls per actor
    for t in threads:
        t.start()
    time.sleep(0.5)  # the first call of each actor is running
    cluster.remove_node(victim)
    for t in threads:
        t.join(WAIT + 30)
    assert not any(t.is_alive() for t in threads)
    return outcomes, p


def test_node_killed_mid_run_fails_in_flight_calls_clearly(cluster):
    outcomes, p = _kill_node_mid_run(cluster, retries=0)
    with p:
        lost = [o for o in outcomes if isinstance(o, BaseException)]
        assert lost, outcomes  # the calls on the removed node
        assert all(isinstance(o, ray.exceptions.RayActorError) for o in lost), lost
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        expected = done[0] if done else None
        assert all(o == expected for o in done)
        # The dead actor is left out: later calls go to the live one.
        assert [p.call("Add", i, 1, wait=WAIT) for i in range(4)] == [1, 2, 3, 4]


def test_node_killed_mid_run_retries_on_the_other_node(cluster):
    outcomes, p = _kill_node_mid_run(cluster, retries=2)
    with p:
        assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
        with hl.SandboxPool(hl.guests.path("simpleguest"), size=1) as local:
            assert outcomes == [local.call("Sum", SLOW_N)] * 4
        alive = {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}
        assert set(p.node_ids()) <= alive
