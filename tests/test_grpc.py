"""storage=grpc://HOST:PORT: workers reach the study through a `zipnet-storage-proxy` process
(Optuna's gRPC proxy) in front of sqlite or PostgreSQL. The proxy's API has no heartbeat and
no lock: the workers beat through a trial attribute and give back what they asked past the
target. Real processes throughout: the proxy, the workers, the stores."""

import os
import signal
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from servers import free_port, start_storage_proxy
from sweep_helpers import SPACE, TINY, Output, assert_study_and_runs_agree, popen, states, study_args, zipnet

from zipnet.sweeps.storage import SURPLUS, WORKER


def _backend(kind: str, tmp_path, request) -> tuple[str, dict, object]:
    """(the URL the proxy serves, the proxy's environment, what this test reads the study through)."""
    if kind == "sqlite":
        (tmp_path / "mlruns").mkdir()
        url = f"sqlite:///{tmp_path}/mlruns/optuna.db"
        return url, {}, url
    pg = request.getfixturevalue("postgres")
    reader = optuna.storages.RDBStorage(  # holds no connection between reads
        pg.url("optuna", password=True), engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}
    )
    return pg.url("optuna"), pg.env, reader  # the password reaches the proxy only, from its PGPASSFILE


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_through_the_proxy_stop_at_exactly_n_trials(tmp_path, request, kind):
    backend, env, reader = _backend(kind, tmp_path, request)
    name = f"grpc_pair_{kind}"
    with start_storage_proxy(backend, env) as proxy:
        args = [*study_args(name, n_trials=10, batch=2, storage=proxy.url, heartbeat_interval=1), *TINY, *SPACE]
        procs = [popen(tmp_path, *args) for _ in range(2)]  # one cwd: one MLflow store, as on a tracking server
        outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    assert all(f"study {name!r}: 10/10 trials" in o for o in outs), [o[-1000:] for o in outs]
    study, parent, children = assert_study_and_runs_agree(tmp_path, name, 10, reader)
    trials = study.get_trials()
    extra = [t for t in trials if t.state == TrialState.FAIL]  # asked past the target by both at once: given back
    assert all(t.user_attrs.get(SURPLUS) for t in extra), [(t.number, t.user_attrs) for t in extra]
    assert len(trials) == 10 + len(extra)
    assert all(t.system_attrs.get("zipnet.beat") for t in trials if t.state == TrialState.COMPLETE)  # beaten for


def test_a_killed_worker_behind_the_proxy_falls_silent_and_its_trials_are_asked_again(tmp_path, request):
    backend, env, reader = _backend("sqlite", tmp_path, request)
    with start_storage_proxy(backend, env) as proxy:
        args = [
            *study_args("grpc_resume", n_trials=8, batch=2, storage=proxy.url, heartbeat_interval=1, grace_period=2),
            "data.n_train=300",
            "data.n_test=100",
            "trainer.passes=2",
            "tracking.figures=false",
            *SPACE,
        ]
        proc = popen(tmp_path, *args)
        Output(proc).wait_for(lambda line: "batch: trials" in line, count=2)  # the first batch told, the second asked
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = states(tmp_path / "mlruns" / "optuna.db")
        running = at_kill["RUNNING"]
        assert running >= 1 and at_kill["COMPLETE"] >= 2, at_kill  # killed mid-batch
        again = zipnet(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "its worker stopped beating for 2 s; asked again" in again.stdout
    study, parent, children = assert_study_and_runs_agree(tmp_path, "grpc_resume", 8, reader)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    stale = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert len(stale) == running
    good = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for t in stale:  # each failed once and asked again once, with the parameters it had drawn
        (retry,) = [g for g in good if Retry.retried_trial_number(g) == t.number]
        assert t.params.items() <= retry.params.items()
    killed = [c for c in children if int(c.data.tags["zipnet.trial"]) in {t.number for t in stale}]
    assert all(c.info.status == "KILLED" for c in killed)


def test_a_live_worker_fails_a_killed_workers_trials_through_the_proxy_and_ends_at_n_trials(tmp_path, request):
    """Two workers at once; one is SIGKILLed holding its first batch. The other, beating, sees those
    trials fall silent, fails them once and asks them again, and the study still counts n_trials."""
    backend, env, reader = _backend("sqlite", tmp_path, request)
    name = "grpc_live"
    with start_storage_proxy(backend, env) as proxy:
        args = [
            *study_args(name, n_trials=8, batch=2, storage=proxy.url, heartbeat_interval=1, grace_period=2),
            "data.n_train=1000",
            "data.n_test=100",
            "trainer.passes=3",
            "tracking.figures=false",
            *SPACE,
        ]
        doomed, survivor = popen(tmp_path, *args), popen(tmp_path, *args)
        Output(doomed).wait_for(lambda line: "batch: trials" in line)  # asked, not yet told
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        out = survivor.communicate(timeout=300)[0]
    assert survivor.returncode == 0, out[-3000:]
    assert "its worker stopped beating for 2 s; asked again" in out
    study, parent, children = assert_study_and_runs_agree(tmp_path, name, 8, reader)
    trials = study.get_trials()
    held = [t for t in trials if str(t.user_attrs.get(WORKER, "")).endswith(f":{doomed.pid}")]
    stale = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS)]
    assert held and {t.number for t in held} == {t.number for t in stale}, [(t.number, t.state) for t in trials]


def test_sigterm_behind_the_proxy_gives_the_trials_back_and_a_rerun_completes(tmp_path, request):
    backend, env, reader = _backend("sqlite", tmp_path, request)
    with start_storage_proxy(backend, env) as proxy:
        args = [
            *study_args("grpc_term", n_trials=4, batch=2, storage=proxy.url),
            "data.n_train=2000",
            "data.n_test=100",
            "trainer.passes=6",
            "tracking.figures=false",
            *SPACE,
        ]
        proc = popen(tmp_path, *args)
        output = Output(proc)
        output.wait_for(lambda line: ": eval: split test" in line, count=2)  # both members past pass 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        out = output.text()
        assert proc.returncode == 143 and "given back" in out, out[-3000:]
        at_stop = states(tmp_path / "mlruns" / "optuna.db")
        assert at_stop.get("RUNNING", 0) == 0 and at_stop["WAITING"] == 2, at_stop  # asked again at once
        again = zipnet(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_study_and_runs_agree(tmp_path, "grpc_term", 4, reader)


def test_two_workers_wait_out_the_proxy_going_away_and_the_study_counts_exactly_n_trials(tmp_path, request):
    """The proxy is SIGKILLed mid-study, once both workers have trials running, and a new one starts on
    the same port after both said so. Their calls wait it out; no one's trial is judged stale for
    the beats the outage swallowed; the study ends at n_trials."""
    backend, env, reader = _backend("sqlite", tmp_path, request)
    name, n = "grpc_away", 8
    with start_storage_proxy(backend, env) as proxy:
        port = int(proxy.url.rpartition(":")[2])
        args = [*study_args(name, n_trials=n, batch=2, storage=proxy.url, heartbeat_interval=1, grace_period=2)]
        args += ["data.n_train=1000", "data.n_test=100", "trainer.passes=3", "tracking.figures=false", *SPACE]
        procs = [popen(tmp_path, *args) for _ in range(2)]
        outs = [Output(p) for p in procs]
        for out in outs:
            out.wait_for(lambda line: "batch: trials" in line)
        os.killpg(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait()
        for out in outs:  # each worker has found the proxy gone, in one line, and waits
            out.wait_for(lambda line: "storage unreachable (" in line, timeout=120)
        with start_storage_proxy(backend, env, port=port):
            codes = [p.wait(timeout=600) for p in procs]
    texts = [out.text() for out in outs]
    assert codes == [0, 0], [t[-3000:] for t in texts]
    for text in texts:
        assert "Traceback" not in text, text[-3000:]
        assert "storage unreachable (" in text, text[-3000:]
        assert "storage answers again after" in text, text[-3000:]
        assert "stopped beating" not in text, text[-3000:]  # a beat the outage swallowed is not silence
    study, parent, children = assert_study_and_runs_agree(tmp_path, name, n, reader)
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS)]
    assert not failed, [(t.number, t.user_attrs) for t in failed]


def _proxy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipnet.cli.storage_proxy", *args], capture_output=True, text=True, timeout=120
    )


def test_the_proxy_refuses_a_taken_port_and_a_bad_url_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    with start_storage_proxy(url) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        second = _proxy("--storage", url, "--port", port)  # gRPC's SO_REUSEPORT would let it share the port
        assert proxy.proc.poll() is None
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"zipnet-storage-proxy: error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "stop what holds it, or pick another"
    ]
    for bad, text in [
        ("nonsense", "not a storage URL"),
        ("nosuchdialect://x/y", "cannot open it"),
        (f"sqlite:///{tmp_path}/no/such/dir/optuna.db", "no/such/dir does not exist"),
        (f"journal:{tmp_path}/journal.log", "cannot serve a journal storage"),
    ]:
        done = _proxy("--storage", bad, "--port", str(free_port()))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and text in lines[0], done.stderr


@pytest.mark.parametrize(
    "storage,text",
    [
        ("grpc://127.0.0.1", "give grpc://HOST:PORT"),
        (None, "no proxy answered there within storage_timeout (1 s); start one with zipnet-storage-proxy"),
    ],
)
def test_a_worker_without_a_proxy_to_reach_says_so_before_any_trial(tmp_path, storage, text):
    storage = storage or f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    proc = zipnet(
        tmp_path, *study_args("lost", storage=storage, storage_timeout=1), *TINY, "optim.lr=choice(0.01,0.03)"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert text in proc.stderr, proc.stderr[-2000:]


def test_a_grpc_error_reads_in_one_line_as_its_status_and_details():
    """What a heartbeat or a storage error logs when the proxy is gone: not gRPC's multi-line repr."""
    import warnings

    from zipnet.errors import first_line

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # marked experimental
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=free_port())  # nothing listens there
    with pytest.raises(Exception) as caught:
        client.get_all_studies()
    client.close()
    assert first_line(caught.value).startswith("gRPC UNAVAILABLE: failed to connect"), first_line(caught.value)
