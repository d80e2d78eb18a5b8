"""`minires study` end to end on `shapes`: run, stop midway, resume, restart
without a checkpoint, report; and the spec checks."""
import json
import os
import subprocess
import sys

import pytest

from minires.study import dry_run, load_spec, run_config, run_state, run_study, study_dir

TIMING = {"images_per_second", "epoch_seconds", "wall_seconds"}
# Tiny models on 64 shapes images; the spec says cifar10 and the tests pass --dataset shapes.
SPEC = {
    "name": "tiny", "question": "a smoke test", "data": "shapes",
    "recipe": {"dataset": "cifar10", "train_size": 64, "test_size": 32, "batch_size": 32,
               "width_scale": 0.25, "lr": 0.05, "schedule": "linear"},
    "experiments": {"E1": "epochs", "E2": "equal compute", "E5": "a placeholder"},
    "runs": [
        {"name": "e2-resnet-8", "experiments": ["E2"], "model": "resnet-8", "budget": 0.2, "seed": 0},
        {"name": "e1-plain-8", "experiments": ["E1"], "model": "plain-8", "epochs": 4, "seed": 0},
        {"name": "e2-seed-cnn", "experiments": ["E2"], "model": "seed-cnn", "options": {"dropout": 0.0},
         "budget": 0.05, "seed": 1},
    ],
}
SCALE = 0.5


def _write_spec(tmp_path, spec=SPEC):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "minires", "study", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _log(run_dir, strip_timing=True):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in log] if strip_timing else log


def test_study_runs_stops_resumes_restarts_and_reports(tmp_path):
    spec_path = _write_spec(tmp_path)
    root = study_dir(spec_path, SCALE)
    assert root.endswith("tiny-scale0.5")
    runs = {name: os.path.join(root, "runs", name) for name in ("e2-resnet-8", "e1-plain-8", "e2-seed-cnn")}

    # the plan: scaled steps, several epochs each, nothing run yet
    rows = dry_run(spec_path, scale=SCALE, dataset="shapes")
    assert [r["state"] for r in rows] == ["new"] * 3 and all(r["epochs"] >= 2 for r in rows)
    assert rows[1]["epochs"] == pytest.approx(2.0)              # 4 epochs x 0.5

    # first sitting: interrupted after one epoch of the first run
    assert run_study(spec_path, scale=SCALE, dataset="shapes", progress=False, stop_after=1, max_runs=1) \
        == ["e2-resnet-8"]
    spec = load_spec(spec_path)
    config = run_config(spec, spec["runs"][0], SCALE, "shapes")
    assert run_state(runs["e2-resnet-8"], config) == "stopped" and len(_log(runs["e2-resnet-8"])) == 1

    # second sitting (CLI): resumes the first, runs the rest
    out = _cli("run", spec_path, "--scale", "0.5", "--dataset", "shapes", "--no-progress", cwd=tmp_path)
    assert "e2-resnet-8 (stopped)" in out and "e1-plain-8 (new)" in out and "trained 3 run(s)" in out
    for name, run_dir in runs.items():
        cfg = run_config(spec, next(r for r in spec["runs"] if r["name"] == name), SCALE, "shapes")
        assert run_state(run_dir, cfg) == "finished", name
    assert not any(f.endswith(".npz") for f in os.listdir(os.path.join(root, "runs")))
    assert sorted(os.listdir(runs["e1-plain-8"])) == ["best.npz", "checkpoint.npz", "config.json",
                                                      "log.jsonl", "machine.json"]

    # the resumed run equals the same run made in one go
    straight = str(tmp_path / "straight")
    from minires.train import train
    train(config, straight, progress=False, verbose=False)
    assert _log(straight) == _log(runs["e2-resnet-8"])

    # another machine: the committed log is there, the checkpoint is not -> rerun from scratch, same numbers
    before = _log(runs["e2-seed-cnn"])
    os.remove(os.path.join(runs["e2-seed-cnn"], "checkpoint.npz"))
    os.remove(os.path.join(runs["e2-seed-cnn"], "best.npz"))
    with open(os.path.join(runs["e2-seed-cnn"], "log.jsonl")) as f:
        first = f.readline()
    with open(os.path.join(runs["e2-seed-cnn"], "log.jsonl"), "w") as f:
        f.write(first)
    out = _cli("run", spec_path, "--scale", "0.5", "--dataset", "shapes", "--no-progress", cwd=tmp_path)
    assert "e2-seed-cnn (restart)" in out and "trained 1 run(s)" in out
    assert _log(runs["e2-seed-cnn"]) == before

    # nothing left: a rerun trains nothing; the dry run reads speeds from the logs
    out = _cli("run", spec_path, "--scale", "0.5", "--dataset", "shapes", "--no-progress", cwd=tmp_path)
    assert "trained 0 run(s)" in out
    out = _cli("run", spec_path, "--scale", "0.5", "--dataset", "shapes", "--dry-run", cwd=tmp_path)
    assert out.count("(log)") == 3 and out.count("| finished |") == 3

    # the report, from the run folders alone
    out = _cli("report", spec_path, "--scale", "0.5", cwd=tmp_path)
    report = open(os.path.join(root, "REPORT.md")).read()
    for text in ("## Setup", "## E1: epochs", "## E2: equal compute", "| e1-plain-8 | plain-8 |",
                 "seed-cnn no dropout", "## Verdicts", "**C1**", "not yet run", "No runs in this spec yet",
                 "no quiet measurement yet", "| - | - |"):
        assert text in report, text
    for png in ("accuracy_vs_compute.png", "e1_curves.png", "gap_vs_params.png"):
        assert os.path.getsize(os.path.join(root, png)) > 1000

    # the unscaled study is untouched
    assert not os.path.exists(study_dir(spec_path))

    # the time axis measured once (for every scale), then the report's hours come from it
    out = _cli("speed", spec_path, "--steps", "1", cwd=tmp_path)
    assert out.count(" img/s, eval ") == 3 and os.listdir(study_dir(spec_path)) == ["speed.json"]
    _cli("report", spec_path, "--scale", "0.5", cwd=tmp_path)
    report = open(os.path.join(root, "REPORT.md")).read()
    assert "`minires study speed " in report and "no quiet measurement" not in report
    assert "| - | - |" not in report and report.count("| e2-") == 2
    out = _cli("run", spec_path, "--scale", "0.5", "--dataset", "shapes", "--dry-run", cwd=tmp_path)
    assert out.count("(quiet)") == 3


def test_a_changed_spec_never_continues_an_old_run(tmp_path):
    spec_path = _write_spec(tmp_path)
    run_study(spec_path, only=["e2-seed-cnn"], scale=SCALE, dataset="shapes", progress=False, stop_after=1)
    changed = json.loads(json.dumps(SPEC))
    changed["runs"][2]["budget"] = 0.1
    _write_spec(tmp_path, changed)
    with pytest.raises(ValueError, match="budget=0.025 but the spec now says 0.05; delete the folder"):
        run_study(spec_path, only=["e2-seed-cnn"], scale=SCALE, dataset="shapes", progress=False)


@pytest.mark.parametrize("change,message", [
    (lambda s: s["runs"][0].update(epochs=3), "exactly one of budget and epochs"),
    (lambda s: s["runs"][1].update(name="e2-resnet-8"), "unique"),
    (lambda s: s["runs"][0].update(options={"colour": "red"}), "'colour' is not a TrainConfig field"),
    (lambda s: s["runs"][0].update(budjet=1), "unknown keys"),
])
def test_spec_errors_are_clear(tmp_path, change, message):
    spec = json.loads(json.dumps(SPEC))
    change(spec)
    with pytest.raises(ValueError, match=message):
        load_spec(_write_spec(tmp_path, spec))


def test_the_cifar10_spec_follows_the_issue():
    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "studies", "cifar10.json"))
    runs = spec["runs"]
    e1 = {r["model"] for r in runs if "E1" in r["experiments"]}
    assert e1 == {"plain-20", "plain-56", "resnet-20", "resnet-56"}
    assert all(r["epochs"] >= 8 for r in runs if "E1" in r["experiments"])
    e2 = [r for r in runs if "E2" in r["experiments"]]
    budgets = sorted({r["budget"] for r in e2})
    assert len(budgets) == 2 and budgets[1] >= 3 * budgets[0]
    for b in budgets:
        assert {r["model"] for r in e2 if r["budget"] == b} == {
            "seed-cnn", "resnet-20", "resnet-56", "bottleneck-29", "wrn-16-4", "seed-wide-20",
            "imagenet-resnet-18", "imagenet-resnet-50"}
    e4 = [r for r in runs if "E4" in r["experiments"] and r["model"] == "bottleneck-29"]
    assert sorted(r.get("options", {}).get("bottleneck_div", 2) for r in e4) == [2, 2, 4, 4]
    assert "/work" not in json.dumps(spec)


def _row(model, final, gap, params, epochs=1.5, budget=1.5):
    return dict(finished=True, framework="minires", model=model, spec_budget=budget, spec_epochs=None,
                options={}, recipe={}, final=final, train=final + gap, gap=gap, params=params, macs=1.0,
                experiments=["E2"], epochs=epochs)


def test_verdicts_do_not_claim_what_the_budget_cannot_show():
    """C3 needs overfitting to exist: with every train-test gap <= 1 point it is
    not settled, whatever the correlation; a comparison where a model trained
    under one epoch says so."""
    from minires.study_report import verdicts
    underfit = [_row(m, 0.5, -0.02 + 0.001 * i, 1000 * (i + 1)) for i, m in
                enumerate(["seed-cnn", "resnet-20", "resnet-56", "wrn-16-4"])]
    assert verdicts(underfit, [1.5])["C3"][0] == "not settled at this budget"
    overfit = [_row(m, 0.5, 0.02 + 0.01 * i, 1000 * (i + 1)) for i, m in
               enumerate(["seed-cnn", "resnet-20", "resnet-56", "wrn-16-4"])]
    assert verdicts(overfit, [1.5])["C3"][0] == "supported"
    rows = [_row("resnet-20", 0.6, 0.0, 1), _row("wrn-16-4", 0.3, 0.0, 2, epochs=0.16),
            _row("resnet-20", 0.7, 0.0, 1, budget=4.5), _row("wrn-16-4", 0.4, 0.0, 2, epochs=0.47, budget=4.5)]
    verdict, text = verdicts(rows, [1.5, 4.5])["C5"]
    assert verdict == "not supported"
    # each short run named with its budget: two budgets, two different epoch counts
    assert "wrn-16-4 trained for only 0.16 epochs at 1.5 R20 epochs" in text
    assert "wrn-16-4 trained for only 0.47 epochs at 4.5 R20 epochs" in text


def test_e1_verdicts_read_the_e1_runs_which_record_diagnostics():
    """The spec's E1 runs set recipe {"diagnostics": true} (it records, it does
    not change training): C2 and the degradation verdict must still find them."""
    from minires.study_report import verdicts

    def e1(model, final, train):
        row = _row(model, final, train - final, 1, epochs=8, budget=None)
        return {**row, "spec_epochs": 8, "recipe": {"diagnostics": True}, "experiments": ["E1"]}
    rows = [e1("plain-20", 0.79, 0.79), e1("plain-56", 0.70, 0.69), e1("resnet-20", 0.81, 0.82),
            e1("resnet-56", 0.75, 0.75)]
    out = verdicts(rows, [1.5], 8)
    assert out["C2"][0] == "supported" and "resnet-20 81.0% vs resnet-56 75.0%" in out["C2"][1]   # cheaper, not worse
    assert out["Degradation"][0].startswith("plain-56 trains worse than plain-20: supported")
    assert "resnet-56 trains at least as well as resnet-20: not supported" in out["Degradation"][0]
    assert "rises by +10.0 points without shortcuts and +7.0 with them" in out["Degradation"][1]
    assert "not like for like" not in out["Degradation"][1]


def test_degradation_compares_the_runs_of_the_papers_recipe():
    """He et al. trained plain nets and ResNets with weight decay 1e-4: the verdict
    compares those four runs, never the first plain runs, which took 5e-4."""
    from minires.study_report import verdicts

    def e1(model, final, train, recipe):
        row = _row(model, final, train - final, 1, epochs=8, budget=None)
        return {**row, "spec_epochs": 8, "recipe": recipe, "experiments": ["E1"]}
    paper, old = {"diagnostics": True}, {"diagnostics": True, "weight_decay": 0.0005}
    rows = [e1("plain-20", 0.78, 0.78, paper), e1("plain-56", 0.50, 0.48, paper),
            e1("resnet-20", 0.81, 0.82, paper), e1("resnet-56", 0.75, 0.75, paper),
            e1("plain-56", 0.44, 0.30, old)]
    verdict, text = verdicts(rows, [1.5], 8)["Degradation"]
    assert verdict.startswith("plain-56 trains worse than plain-20: supported")
    assert "plain-56 52.0%" in text and "+30.0 points without shortcuts" in text
    only_old = [e1("plain-20", 0.79, 0.79, old)] + rows[1:]
    assert verdicts(only_old, [1.5], 8)["Degradation"][0] == "not yet run"


def test_quiet_hours_and_pareto_front():
    from minires.study_report import add_quiet_hours, pareto_front
    row = dict(images_seen=1000, test_images=500, quiet_ips=None, quiet_hours=None)
    add_quiet_hours(row, None)
    assert row["quiet_hours"] is None
    add_quiet_hours(row, dict(train_images_per_second=100.0, eval_images_per_second=500.0))
    assert row["quiet_ips"] == 100.0 and row["quiet_hours"] == pytest.approx((1000 / 100 + 500 / 500) / 3600)
    # (cost, accuracy): (2, 0.5) is beaten by (1, 0.6); the tie in cost keeps the better one
    assert pareto_front([(3, 0.9), (2, 0.5), (1, 0.6), (1, 0.4), (4, 0.8)]) == [(1, 0.6), (3, 0.9)]


def test_other_load_sees_a_busy_neighbour():
    """The quiet check of `minires study speed`: a busy child process counts."""
    import time
    from minires.study_speed import other_load
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    spin = "import time\nt = time.time()\nwhile time.time() - t < 2.0: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        result, load = other_load(lambda: time.sleep(1.0) or 7)
    finally:
        child.wait()
    assert result == 7 and load > 0.6


def test_other_load_does_not_count_the_measuring_process():
    """...and the measuring process's own work does not: compared with an idle
    second (pytest -n 2 runs another worker beside this one). On a machine whose
    cores are all busy anyway, spinning adds nothing to the total and the check
    could not fail, so it is skipped there."""
    import time
    from minires.study_speed import other_load
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")

    def own_spin():
        t = time.perf_counter()
        while time.perf_counter() - t < 1.0:
            pass
    _, idle = other_load(lambda: time.sleep(1.0))
    if idle > os.cpu_count() - 1.2:
        pytest.skip(f"other processes keep {idle:.1f} of {os.cpu_count()} cores busy: no free core to measure on")
    _, spinning = other_load(own_spin)
    assert spinning < idle + 0.5
