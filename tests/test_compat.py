"""The seed-compatible API: versioning service, hydrator flags, kernel protocol, and the
seed's data-loss bugs as regression tests."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import statebag
from statebag import ConfigError, ConflictError, IntegrityError, InvalidInputError, NotFoundError
from statebag.compat import (
    StateHydrator,
    StateVersioningService,
    _reset_for_test,
    content_hash,
    execution_chain,
    get_hydrator,
    open_state_bag,
    seal_state_bag,
    workflow_chain,
)
from statebag.hydrator import POINTER_KEY, offload_chain

from . import internals

_ENV = (
    "STATEBAG_REPO",
    "USE_BATCHING",
    "USE_ZSTD",
    "ZSTD_LEVEL",
    "GC_DLQ_URL",
    "AN_STRICT_MODE",
    "S3_BUCKET",
    "SKELETON_S3_BUCKET",
    "MANIFESTS_TABLE",
)
SAVE_KEYS = {
    "success",
    "manifest_id",
    "blocks_uploaded",
    "manifest_hash",
    "segment_id",
    "block_ids",
    "s3_paths",
}
LIMIT = 262_144


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    _reset_for_test()
    yield
    _reset_for_test()


@pytest.fixture
def url() -> str:
    return f"memory://compat-{uuid.uuid4().hex}"


@pytest.fixture
def svs(url: str) -> Iterator[StateVersioningService]:
    with StateVersioningService(repo=url) as service:
        yield service


def wire(value: Any) -> Any:
    return json.loads(json.dumps(value))


def corrupt_packs(repo: statebag.Repository) -> None:
    for key in sorted(internals.objects(repo).list("packs")):
        data = internals.objects(repo).get(key)
        internals.objects(repo).put(key, bytes(byte ^ 0x5A for byte in data))


def save(svs: StateVersioningService, delta: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args = {"workflow_id": "wf", "execution_id": "exec-1", "owner_id": "owner", "segment_id": 0}
    args.update(kw)
    return svs.save_state_delta(delta, **args)


# -- StateVersioningService ----------------------------------------------------------------------


def test_service_needs_a_repository(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ConfigError, match="pass repo="):
        StateVersioningService()
    with pytest.raises(ConfigError, match="S3 \\+ DynamoDB backend"):
        StateVersioningService(dynamodb_table="t", s3_bucket="b", gc_dlq_url="q")
    # Until the cloud backend exists the service is built from repo= only: an environment
    # repository is never picked up in place of the table and bucket asked for.
    monkeypatch.setenv("STATEBAG_REPO", url)
    with pytest.raises(ConfigError, match="pass repo="):
        StateVersioningService(dynamodb_table="t", s3_bucket="b")
    with pytest.raises(ConfigError, match="pass repo="):
        StateVersioningService()
    with StateVersioningService(use_2pc=False, repo=url) as svs:
        assert svs.use_2pc is False
        assert save(svs, {"a": 1})["success"] is True


def test_hydrator_never_swaps_a_bucket_for_the_environment_repository(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    with pytest.raises(ConfigError, match="bucket_name"):
        StateHydrator(bucket_name="my-bucket")
    StateHydrator().close()  # the environment repository, when nothing else was asked for
    for name in ("S3_BUCKET", "SKELETON_S3_BUCKET", "MANIFESTS_TABLE"):
        monkeypatch.setenv(name, "x")
        with pytest.raises(ConfigError, match=name):
            get_hydrator(reset_for_test=True)
        monkeypatch.delenv(name)
    assert get_hydrator(reset_for_test=True).repo is not None
    _reset_for_test()


def test_save_state_delta_contract(svs: StateVersioningService) -> None:
    first = save(svs, {"a": 1, "b": "x" * 5000, "c": [1, 2]}, segment_id=7)
    assert set(first) == SAVE_KEYS
    assert first["success"] is True and first["segment_id"] == 7
    assert first["manifest_hash"] == first["manifest_id"]
    assert first["blocks_uploaded"] >= 1
    assert len(first["block_ids"]) == first["blocks_uploaded"]
    assert len(first["s3_paths"]) == 1 and first["s3_paths"][0].startswith("packs/")
    assert internals.objects(svs.repo).stat(first["s3_paths"][0]) > 0
    for block in first["block_ids"]:
        assert internals.meta(svs.repo).get(f"node/{block}") is not None
    # Carry-over: fields absent from the delta stay; deleted ones go.
    second = save(
        svs, {"a": 2, "d": None}, previous_manifest_id=first["manifest_id"], deleted=["c"]
    )
    assert set(second) == SAVE_KEYS
    expected = {"a": 2, "b": "x" * 5000, "d": None}
    assert svs.load_state(second["manifest_id"]) == expected
    assert svs.load_latest_state("exec-1") == expected
    info = svs.repo.info(second["manifest_id"])
    assert info.parent == first["manifest_id"]
    assert info.meta == {
        "workflow_id": "wf",
        "owner_id": "owner",
        "execution_id": "exec-1",
        "segment_id": 0,
    }
    # Without previous_manifest_id the delta goes on top of the head.
    third = save(svs, {"e": 5})
    assert svs.repo.info(third["manifest_id"]).parent == second["manifest_id"]
    assert svs.load_latest_state("exec-1") == {**expected, "e": 5}


def test_full_state_and_dirty_keys(svs: StateVersioningService) -> None:
    first = save(svs, {"a": 1, "b": 2, "c": 3})
    full = {"a": 10, "b": 2, "z": 0}
    second = save(
        svs, {"a": 10}, previous_manifest_id=first["manifest_id"], full_state=full, deleted=["c"]
    )
    assert svs.load_latest_state("exec-1") == full
    # dirty_keys is the changed hint: a field it does not name is carried from the parent.
    third = save(
        svs,
        {"a": 11, "b": 99},
        previous_manifest_id=second["manifest_id"],
        dirty_keys=["a"],
    )
    assert svs.load_state(third["manifest_id"]) == {"a": 11, "b": 2, "z": 0}


def test_save_state_delta_refuses_contradictions(svs: StateVersioningService) -> None:
    first = save(svs, {"a": 1})
    previous = first["manifest_id"]
    cases = [
        ({"delta": {"a": 2}, "deleted": ["a"]}, "deleted.a"),
        ({"delta": {"a": 2}, "dirty_keys": ["a", "b"]}, "dirty_keys"),
        ({"delta": {"a": 2}, "full_state": {"a": 3}}, "delta.a"),
        ({"delta": {}, "full_state": {"a": 3}, "deleted": ["a"]}, "deleted"),
        ({"delta": {"a": 2}, "deleted": "a"}, "deleted"),
        ({"delta": {"a": 2}, "workflow_id": ""}, "workflow_id"),
        ({"delta": {"a": 2}, "execution_id": None}, "execution_id"),
        ({"delta": [1]}, "delta"),
        ({"delta": {"a": 2}, "previous_manifest_id": "nope"}, "previous_manifest_id"),
    ]
    for options, path in cases:
        delta = options.pop("delta")
        with pytest.raises(InvalidInputError) as info:
            save(svs, delta, **{"previous_manifest_id": previous, **options})
        assert info.value.path == path, options
    assert svs.repo.head(execution_chain("exec-1")) == previous


def test_stale_previous_manifest_id_conflicts(svs: StateVersioningService) -> None:
    first = save(svs, {"a": 1})
    second = save(svs, {"a": 2}, previous_manifest_id=first["manifest_id"])
    with pytest.raises(ConflictError):
        save(svs, {"a": 3}, previous_manifest_id=first["manifest_id"])
    # Another execution's manifest is not a parent of this one either.
    other = save(svs, {"x": 1}, execution_id="exec-2")
    with pytest.raises(ConflictError):
        save(svs, {"a": 3}, previous_manifest_id=other["manifest_id"])
    assert svs.load_latest_state("exec-1") == {"a": 2}
    assert svs.repo.head(execution_chain("exec-1")) == second["manifest_id"]


def test_an_execution_id_of_another_owner_is_refused(svs: StateVersioningService) -> None:
    first = save(svs, {"a": 1})
    with pytest.raises(InvalidInputError) as info:
        save(svs, {"a": 2}, owner_id="intruder", previous_manifest_id=first["manifest_id"])
    assert info.value.path == "owner_id"
    with pytest.raises(NotFoundError):
        svs.load_latest_state(workflow_id="wf", owner_id="intruder", execution_id="exec-1")
    assert svs.load_latest_state(workflow_id="wf", owner_id="owner", execution_id="exec-1") == {
        "a": 1
    }


def test_load_latest_state_needs_an_execution_id(svs: StateVersioningService) -> None:
    save(svs, {"a": 1})
    with pytest.raises(InvalidInputError, match="another execution") as info:
        svs.load_latest_state(workflow_id="wf", owner_id="owner")
    assert info.value.path == "execution_id"
    with pytest.raises(NotFoundError):
        svs.load_latest_state("never-ran")


def test_corrupt_or_missing_block_raises_never_partial(url: str) -> None:
    with StateVersioningService(repo=url) as svs:
        save(svs, {"small": 1, "big": "B" * 300_000})
        corrupt_packs(svs.repo)
    with StateVersioningService(repo=url) as fresh:
        with pytest.raises(IntegrityError):
            fresh.load_latest_state("exec-1")
        for key in list(internals.objects(fresh.repo).list("packs")):
            internals.objects(fresh.repo).delete(key)
    with StateVersioningService(repo=url) as fresh, pytest.raises(IntegrityError):
        fresh.load_latest_state("exec-1")


def test_chain_names() -> None:
    assert execution_chain("arn:aws:states:eu-west-1:1:execution:sm:run-1") == (
        "arn:aws:states:eu-west-1:1:execution:sm:run-1"
    )
    escaped = {execution_chain(text) for text in ("a~b", "x" * 300, "\x00", "ab" * 32)}
    assert len(escaped) == 4 and all(name.startswith("execution~") for name in escaped)
    for name in escaped:
        offload_chain(name)  # room for the hydrator's suffix
    assert workflow_chain("wf") == "workflow~wf"
    assert workflow_chain("a~b").startswith("workflow~~")
    assert workflow_chain("a~b") != workflow_chain("a~c")


def test_manifests_and_their_verification(svs: StateVersioningService) -> None:
    config = {"name": "pipeline", "retries": 3}
    segments = [{"step": "fetch", "timeout": 30}, {"step": "parse"}, {"step": "store", "n": 2}]
    pointer = svs.create_manifest("wf-1", config, segments)
    assert set(pointer) == {
        "manifest_id",
        "version",
        "parent_hash",
        "manifest_hash",
        "config_hash",
        "segment_hashes",
    }
    assert pointer["version"] == 1 and pointer["parent_hash"] is None
    assert pointer["manifest_hash"] == pointer["manifest_id"]
    assert pointer["config_hash"] == content_hash(config)
    assert pointer["segment_hashes"] == [content_hash(s) for s in segments]
    manifest_id = pointer["manifest_id"]
    for index, segment in enumerate(segments):
        assert svs.verify_segment_config(segment, manifest_id, index) is True
        # Key order does not matter; the canonical encoding sorts keys.
        assert svs.verify_segment_config(dict(reversed(segment.items())), manifest_id, index)
    tampered = {"step": "fetch", "timeout": 31}
    assert svs.verify_segment_config(tampered, manifest_id, 0) is False
    assert svs.verify_segment_config(segments[1], manifest_id, 0) is False
    assert svs.verify_segment_config(segments[0], manifest_id, 3) is False
    assert svs.verify_manifest_integrity(manifest_id) is True
    second = svs.create_manifest("wf-1", config, segments[:2], parent_manifest_id=manifest_id)
    assert second["version"] == 2 and second["parent_hash"] == manifest_id
    with pytest.raises(ConflictError):
        svs.create_manifest("wf-1", config, segments, parent_manifest_id=manifest_id)
    with pytest.raises(NotFoundError):
        svs.verify_manifest_integrity("ab" * 32)
    state_id = save(svs, {"a": 1})["manifest_id"]
    with pytest.raises(InvalidInputError):
        svs.verify_segment_config(segments[0], state_id, 0)


def test_manifest_integrity_fails_on_tampered_storage(url: str) -> None:
    with StateVersioningService(repo=url) as svs:
        segments = [{"step": i, "body": "s" * 2000} for i in range(3)]
        manifest_id = svs.create_manifest("wf", {"c": "c" * 3000}, segments)["manifest_id"]
        assert svs.verify_manifest_integrity(manifest_id)
        corrupt_packs(svs.repo)
    with StateVersioningService(repo=url) as fresh:
        assert fresh.verify_manifest_integrity(manifest_id) is False
        assert fresh.verify_segment_config(segments[0], manifest_id, 0) is False


# -- StateHydrator and get_hydrator ----------------------------------------------------------------


def test_state_hydrator_round_trip(url: str) -> None:
    h = StateHydrator(repo=url, use_batching=True)
    state = {"small": 1, "warm": "w" * 5000, "cold": "c" * 200_000}
    payload = h.dehydrate(state, "owner", "wf", "exec-1")
    assert len(json.dumps(payload)) <= LIMIT
    assert h.hydrate(wire(payload)) == state
    assert h.repo.head(offload_chain(execution_chain("exec-1"))) is not None
    h.close()


def test_state_hydrator_needs_a_repository() -> None:
    with pytest.raises(ConfigError, match="STATEBAG_REPO"):
        StateHydrator()
    with pytest.raises(ConfigError, match="bucket_name"):
        StateHydrator(bucket_name="bucket")


def test_use_zstd_false_stores_frames_raw(tmp_path: Path) -> None:
    text = ("all work and no play " * 20_000).encode()
    # One repository (created with zstd level 3) holds both: every frame names its codec.
    with statebag.open(str(tmp_path / "repo")) as repo:
        assert repo.config.compression_level == 3
        raw = StateHydrator(repo=repo)  # the seed's default: use_zstd=False
        assert raw.use_zstd is False and raw.compression_level == 0
        before = set(internals.objects(repo).list("packs"))
        raw.dehydrate({"doc": text}, "o", "w", "raw")
        raw_packs = set(internals.objects(repo).list("packs")) - before
        packed = StateHydrator(repo=repo, use_zstd=True, compression_level=5)
        assert packed.use_zstd is True and packed.compression_level == 5
        packed.dehydrate({"doc": text + b"!"}, "o", "w", "packed")
        zstd_packs = set(internals.objects(repo).list("packs")) - before - raw_packs

        def stored(keys: set[str]) -> bytes:
            return b"".join(internals.objects(repo).get(k) for k in keys)

        assert text[:4096] in stored(raw_packs)  # the chunks themselves, uncompressed
        assert text[:4096] not in stored(zstd_packs)
        assert len(stored(zstd_packs)) < len(stored(raw_packs)) / 10
        assert raw.hydrate(raw.dehydrate({"doc": text}, "o", "w", "raw")) == {"doc": text}
    with pytest.raises(InvalidInputError):
        StateHydrator(repo=str(tmp_path / "x"), use_zstd=True, compression_level=0)
    with pytest.raises(InvalidInputError):
        StateHydrator(repo=str(tmp_path / "x"), use_zstd=True, compression_level=99)


def test_get_hydrator_reads_the_environment(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ConfigError, match="STATEBAG_REPO"):
        get_hydrator()
    monkeypatch.setenv("S3_BUCKET", "bucket")
    monkeypatch.setenv("MANIFESTS_TABLE", "table")
    with pytest.raises(ConfigError, match="S3_BUCKET, MANIFESTS_TABLE"):
        get_hydrator()
    monkeypatch.delenv("S3_BUCKET")
    monkeypatch.delenv("MANIFESTS_TABLE")
    monkeypatch.setenv("STATEBAG_REPO", url)
    monkeypatch.setenv("USE_BATCHING", "true")
    monkeypatch.setenv("USE_ZSTD", "true")
    monkeypatch.setenv("ZSTD_LEVEL", "7")
    monkeypatch.setenv("GC_DLQ_URL", "https://sqs.example/dlq")
    h = get_hydrator()
    assert h.use_batching is True and h.hydrator.batch_warm is True
    assert h.compression_level == 7 and h.use_zstd is True and h.hydrator.level == 7
    assert h.gc_dlq_url == "https://sqs.example/dlq"
    assert get_hydrator() is h
    # Read when the instance is built, not afterwards.
    monkeypatch.setenv("USE_BATCHING", "false")
    assert get_hydrator() is h and h.use_batching is True
    with pytest.raises(ConfigError, match="reset_for_test"):
        get_hydrator(use_batching=False)
    rebuilt = get_hydrator(reset_for_test=True)
    assert rebuilt is not h and rebuilt.use_batching is False
    _reset_for_test()
    assert get_hydrator(use_batching=True) is not rebuilt


@pytest.mark.parametrize(
    ("variable", "value"),
    [("USE_BATCHING", "maybe"), ("USE_ZSTD", "2"), ("ZSTD_LEVEL", "high"), ("ZSTD_LEVEL", "99")],
)
def test_bad_flags_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str, variable: str, value: str
) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        get_hydrator()


def test_use_zstd_false_from_the_environment(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    monkeypatch.setenv("USE_ZSTD", "false")
    monkeypatch.setenv("ZSTD_LEVEL", "9")
    assert get_hydrator().hydrator.level == 0
    _reset_for_test()
    monkeypatch.setenv("USE_ZSTD", "true")
    assert get_hydrator().hydrator.level == 9
    _reset_for_test()
    monkeypatch.setenv("USE_ZSTD", "maybe")
    with pytest.raises(ConfigError, match="USE_ZSTD"):
        get_hydrator()


def test_warm_fields_survive_consecutive_calls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # The seed lost warm fields on two calls of three.
    monkeypatch.setenv("STATEBAG_REPO", url)
    for batching in ("true", "false"):
        monkeypatch.setenv("USE_BATCHING", batching)
        h = get_hydrator(reset_for_test=True)
        state: dict[str, Any] = {"id": 1}
        for call in range(6):
            state = {**state, f"warm{call}": f"{call} " * 700, "id": call}
            payload = wire(h.dehydrate(state, "o", "w", f"exec-{batching}"))
            assert h.hydrate(payload) == state, (batching, call)


# -- kernel protocol ------------------------------------------------------------------------------


def test_open_state_bag_lookup_order() -> None:
    assert open_state_bag({"state_data": {"bag": {"a": 1}, "other": 2}}) == {"a": 1}
    assert open_state_bag({"state_data": {"a": 1}}) == {"a": 1}
    assert open_state_bag({"a": 1}) == {"a": 1}


def test_strict_mode_is_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    for event in ({}, {"state_data": None}, {"state_data": {"bag": []}}, None):
        assert open_state_bag(event) == {}
    monkeypatch.setenv("AN_STRICT_MODE", "true")
    for event in ({}, {"state_data": None}, {"state_data": {"bag": []}}, None):
        with pytest.raises(ValueError, match="AN_STRICT_MODE"):
            open_state_bag(event)
    assert open_state_bag({"a": 1}) == {"a": 1}
    monkeypatch.setenv("AN_STRICT_MODE", "false")
    assert open_state_bag({}) == {}
    monkeypatch.setenv("AN_STRICT_MODE", "sometimes")
    with pytest.raises(ConfigError, match="AN_STRICT_MODE"):
        open_state_bag({})


def test_seal_needs_configuration() -> None:
    with pytest.raises(ConfigError, match="STATEBAG_REPO"):
        seal_state_bag({"a": 1}, {"b": 2})


def test_seal_keeps_100_mb_under_the_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATEBAG_REPO", str(tmp_path / "repo"))
    block = os.urandom(1 << 20)
    base = {f"blob{i}": block[i:] + block[:i] for i in range(100)}  # 100 MiB, 100 fields
    base["route"] = "next"
    delta = {"result": {"ok": True}, "note": "n" * 3000}
    sealed = seal_state_bag(base, delta, action="continue", context={"execution_id": "big-1"})
    assert len(json.dumps(sealed).encode()) <= LIMIT
    assert set(sealed) == {"state_data", "next_action"} and sealed["next_action"] == "continue"
    bag = sealed["state_data"]["bag"]
    assert sealed["state_data"]["current_manifest_id"] == bag[POINTER_KEY]["manifest"]
    opened = open_state_bag(wire(sealed))
    assert opened == {**base, **delta}


def test_seal_output_limit_counts_the_wrapper(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    # Inline-sized fields whose JSON alone is 50 bytes under 256 KiB: only the wrapper
    # pushes it over, so a seal that forgot the wrapper would send them all inline.
    lengths = [1016] * 209 + [1015] * 46
    state = {f"f{i:03d}": "v" * length for i, length in enumerate(lengths)}
    assert len(json.dumps(state)) == LIMIT - 50
    sealed = seal_state_bag(state, {}, action="a" * 2000)
    assert len(json.dumps(sealed)) <= LIMIT
    assert POINTER_KEY in sealed["state_data"]["bag"]
    assert open_state_bag(wire(sealed)) == state
    small = seal_state_bag({"a": 1}, {"b": 2})
    assert small == {
        "state_data": {"bag": {"a": 1, "b": 2}, "current_manifest_id": None},
        "next_action": "sync",
    }


def test_seal_with_an_action_too_large_for_the_limit_says_so(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    shell = {"state_data": {"bag": {}, "current_manifest_id": "0" * 64}, "next_action": ""}
    # The longest action that leaves the smallest payload a hydrator can make (512 bytes).
    longest = LIMIT - 512 - (len(json.dumps(shell)) - len("{}"))
    state = {"big": "x" * 5000, "a": 1}
    sealed = seal_state_bag(state, {}, action="a" * longest, context={"execution_id": "e"})
    assert len(json.dumps(sealed)) <= LIMIT
    assert open_state_bag(wire(sealed)) == state
    for action in ("a" * (longest + 1), "a" * 300_000):
        with pytest.raises(InvalidInputError, match="action is too large") as info:
            seal_state_bag(state, {}, action=action, context={"execution_id": "f"})
        assert info.value.path == "action"
    with statebag.open(url, create=False) as repo:
        assert list(repo.chains()) == ["e~offload"]


def test_seal_hydrates_a_sealed_base(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("STATEBAG_REPO", url)
    first = seal_state_bag({"big": "B" * 300_000}, {"a": 1}, context={"execution_id": "e"})
    second = seal_state_bag(first["state_data"]["bag"], {"a": 2}, context={"execution_id": "e"})
    assert open_state_bag(wire(second)) == {"big": "B" * 300_000, "a": 2}


def _segment(step: int, state: dict[str, Any], tag: str) -> dict[str, Any]:
    """What one Lambda step of the workflow adds: a little every time, sometimes a lot."""
    delta: dict[str, Any] = {"step": step, f"result_{step:02d}": {"tag": tag, "n": step}}
    history = list(state.get("history", []))
    history.append(f"{tag} step {step} " * 50)
    delta["history"] = history
    if step % 5 == 0:
        delta[f"attachment_{step:02d}"] = (tag.encode() * 40_000)[: 50_000 + step]
    return delta


def _run_workflow(
    svs: StateVersioningService, execution: str, tag: str, steps: int = 20
) -> tuple[dict[str, Any], list[str]]:
    event: dict[str, Any] = {"state_data": {"bag": {"tag": tag}}}
    previous: str | None = None
    manifests = []
    state: dict[str, Any] = {}
    for step in range(steps):
        state = open_state_bag(wire(event))
        delta = _segment(step, state, tag)
        saved = svs.save_state_delta(
            delta, "wf-shared", execution, "owner", step, previous_manifest_id=previous
        )
        assert set(saved) == SAVE_KEYS
        previous = saved["manifest_id"]
        manifests.append(previous)
        event = seal_state_bag(state, delta, context={"execution_id": execution})
        assert len(json.dumps(event)) <= LIMIT
        state = {**state, **delta}
    return state, manifests


def test_twenty_segment_workflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    monkeypatch.setenv("STATEBAG_REPO", url)
    with StateVersioningService(repo=url) as svs:
        final_a, manifests = _run_workflow(svs, "exec-a", "alpha")
        # Chain continuity: 20 versions, each the child of the previous.
        log = list(svs.repo.log(execution_chain("exec-a")))
        assert [info.manifest_id for info in reversed(log)] == manifests
        assert [info.parent for info in reversed(log)] == [None, *manifests[:-1]]
        # The saved state is the deltas' union (the tag came from the first event only).
        latest = svs.load_latest_state("exec-a")
        assert latest == {k: v for k, v in final_a.items() if k != "tag"}
        # A second execution of the same workflow never sees the first one's state.
        final_b, _ = _run_workflow(svs, "exec-b", "beta", steps=3)
        latest_b = svs.load_latest_state("exec-b")
        assert latest_b == {k: v for k, v in final_b.items() if k != "tag"}
        assert all("alpha" not in json.dumps(v, default=str) for v in latest_b.values())
        assert svs.load_latest_state("exec-a") == latest


# -- parallel branches: fork on a branch's first save, fan-in, aggregate ----------------------


def _branches(svs: StateVersioningService, n: int) -> tuple[str, list[dict[str, Any]]]:
    """A parent execution and ``n`` branch executions started from its head, each saving
    its own result field twice and appending to the shared list."""
    parent = svs.save_state_delta(
        {"shared": "s" * 5000, "log": ["start"], "count": 0}, "wf", "exec-1", "owner", 0
    )["manifest_id"]
    results = []
    for b in range(n):
        execution = f"exec-1/branch-{b}"
        first = svs.save_state_delta(
            {f"result_{b}": {"step": 1}, "log": ["start", f"b{b}"]},
            "wf",
            execution,
            "owner",
            1,
            previous_manifest_id=parent,
        )
        results.append(
            svs.save_state_delta(
                {f"result_{b}": {"step": 2}},
                "wf",
                execution,
                "owner",
                2,
                previous_manifest_id=first["manifest_id"],
            )
        )
    return parent, results


def test_a_branch_execution_starts_from_its_parents_version(svs: StateVersioningService) -> None:
    parent, _ = _branches(svs, 2)
    repo = svs.repo
    branch = execution_chain("exec-1/branch-0")
    log = [info.manifest_id for info in repo.log(branch)]
    assert log[-1] == parent and len(log) == 3
    assert svs.load_latest_state("exec-1/branch-0") == {
        "count": 0,
        "log": ["start", "b0"],
        "result_0": {"step": 2},
        "shared": "s" * 5000,
    }
    assert svs.load_latest_state("exec-1")["log"] == ["start"]  # the parent did not move
    # Another owner's (or workflow's) version is never a starting point.
    with pytest.raises(InvalidInputError, match="owner_id"):
        svs.save_state_delta({"x": 1}, "wf", "intruder", "mallory", 0, previous_manifest_id=parent)
    assert repo.head(execution_chain("intruder")) is None


def test_aggregate_branch_results_merges_into_the_parent(svs: StateVersioningService) -> None:
    parent, results = _branches(svs, 3)
    out = svs.aggregate_branch_results(results, merge_strategy="deep_merge")
    assert set(out) == {*SAVE_KEYS - {"segment_id"}, "parents", "execution_chain"}
    assert out["execution_chain"] == execution_chain("exec-1")
    assert out["parents"] == [parent, *(r["manifest_id"] for r in results)]
    merged = svs.load_latest_state("exec-1")
    assert merged == {
        "count": 0,
        "log": ["start", "b0", "b1", "b2"],  # each branch's append, in order
        "result_0": {"step": 2},
        "result_1": {"step": 2},
        "result_2": {"step": 2},
        "shared": "s" * 5000,
    }
    assert svs.repo.audit().ok


def test_aggregate_collect_lists_each_branchs_value(svs: StateVersioningService) -> None:
    _, results = _branches(svs, 2)
    svs.aggregate_branch_results(results, merge_strategy="collect")
    merged = svs.load_latest_state("exec-1")
    assert merged["log"] == [["start", "b0"], ["start", "b1"]]
    assert merged["result_0"] == [{"step": 2}] and merged["count"] == 0


def test_aggregate_last_wins_takes_the_last_branch(url: str) -> None:
    with StateVersioningService(repo=url) as svs:
        _, results = _branches(svs, 2)
        svs.aggregate_branch_results(results, merge_strategy="last_wins")
        assert svs.load_latest_state("exec-1")["log"] == ["start", "b1"]


def test_aggregate_refuses_stale_and_bad_results(svs: StateVersioningService) -> None:
    _, results = _branches(svs, 2)
    head = svs.repo.head("exec-1")
    svs.save_state_delta(
        {"result_0": {"step": 3}},
        "wf",
        "exec-1/branch-0",
        "owner",
        3,
        previous_manifest_id=results[0]["manifest_id"],
    )
    with pytest.raises(ConflictError, match="no longer the head"):
        svs.aggregate_branch_results(results)
    with pytest.raises(InvalidInputError, match="strategy"):
        svs.aggregate_branch_results([results[1]], merge_strategy="union")
    with pytest.raises(InvalidInputError) as info:
        svs.aggregate_branch_results([{"no": "id"}])
    assert info.value.path == "results[0]"
    with pytest.raises(InvalidInputError):
        svs.aggregate_branch_results([])
    assert svs.repo.head("exec-1") == head


def test_save_state_delta_fan_in_with_a_list_of_previous_ids(svs: StateVersioningService) -> None:
    parent, results = _branches(svs, 2)
    ids = [r["manifest_id"] for r in results]
    out = svs.save_state_delta(
        {"count": 2}, "wf", "exec-1", "owner", 9, previous_manifest_id=[parent, *ids]
    )
    assert set(out) == SAVE_KEYS
    assert svs.repo.info(out["manifest_id"]).parents == [parent, *ids]
    assert svs.load_latest_state("exec-1")["count"] == 2
    # The first id must be the execution's head, as for a single id.
    with pytest.raises(ConflictError):
        svs.save_state_delta(
            {"count": 3}, "wf", "exec-1", "owner", 10, previous_manifest_id=[parent, *ids]
        )
    with pytest.raises(InvalidInputError, match="previous_manifest_id"):
        svs.save_state_delta({"count": 3}, "wf", "exec-1", "owner", 10, previous_manifest_id=[])
    assert svs.repo.head("exec-1") == out["manifest_id"]
