"""tools/curves.py (issue 19's curves and CCAR statistics over training) on a hand-made grid, checked with numpy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TOOL = Path(__file__).resolve().parent.parent / "tools" / "curves.py"
STATS = ("omega_mean", "omega_std", "below_pivot", "p_true_mean", "weight_mean")


def write_cell(grid: Path, name: str, records: list, final=None) -> None:
    cell = grid / "cells" / name
    cell.mkdir(parents=True)
    (cell / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final is not None:  # a finished cell: its last epoch's test evaluation lives in metrics.json
        (cell / "metrics.json").write_text(json.dumps(final))


def ccar_records(rng, epochs: int, groups=("all", "many", "medium")) -> list:
    """A CCAR cell's history without a Few group (every class has 20 images or more)."""
    return [{"epoch": e, "lr": float(rng.uniform(0.01, 0.1)),
             **{f"ccar_{stat}_{g}": float(rng.uniform(0.1, 2.0)) for stat in STATS for g in groups}}
            for e in range(epochs)]


def parse_rows(text: str) -> dict:
    """{(epoch, group): [the five numbers]} from the --ccar-table Markdown."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0].isdigit():
            rows[(int(cells[0]), cells[1])] = [cells[2], cells[3], cells[4], cells[5], cells[6]]
    return rows


def test_ccar_table_and_curve_table_match_numpy(tmp_path):
    rng = np.random.default_rng(7)
    seed0, seed1 = ccar_records(rng, 30), ccar_records(rng, 27)  # seed 1 is still training
    write_cell(tmp_path, "ccar_bs-seed0", seed0)
    write_cell(tmp_path, "ccar_bs-seed1", seed1)
    accuracy = {s: rng.uniform(0.5, 0.9, 6) for s in (0, 1)}  # test evaluated every 5th epoch, the last in metrics.json
    for s in (0, 1):
        records = [{"epoch": e, "lr": 0.1, **({"test": {"balanced_accuracy": float(accuracy[s][e // 5])}}
                                             if e % 5 == 4 and e < 29 else {})} for e in range(30)]
        write_cell(tmp_path, f"bs-seed{s}", records, final={"epochs": 30, "test": {"balanced_accuracy": float(accuracy[s][5])}})
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--ccar-output", str(tmp_path / "cc.png"), "--ccar-table", str(tmp_path / "cc.md"),
                          "--table", str(tmp_path / "t.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "cc.png").stat().st_size > 0

    rows = parse_rows((tmp_path / "cc.md").read_text())
    assert {e for e, _ in rows} == {1, 25, 30}  # the first, every 25th, the last
    assert {g for _, g in rows} == {"all", "many", "medium"}  # no Few group recorded: no Few rows
    for (epoch, group), cells in rows.items():
        present = [h[epoch - 1] for h in (seed0, seed1) if len(h) >= epoch]  # epoch 30: seed 0 only
        mean = lambda key: np.mean([r[f"ccar_{key}_{group}"] for r in present])  # noqa: E731
        assert cells[0] == f"{mean('omega_mean'):.3f}"
        assert cells[1] == f"{mean('omega_std'):.3f}"
        assert cells[2] == f"{100 * mean('below_pivot'):.1f} %"
        assert cells[3] == f"{mean('p_true_mean'):.3f}"
        effective = np.mean([r["lr"] * r[f"ccar_weight_mean_{group}"] for r in present])
        assert cells[4] == f"{effective:.4g}"

    [bs_row] = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith("| bs ")]
    values = [c.strip() for c in bs_row.strip("|").split("|")][1:]
    # epochs 25 (an evaluated epoch) and 30 (the last, from metrics.json), mean over both seeds
    assert values == [f"{100 * np.mean([accuracy[s][4] for s in (0, 1)]):.2f}",
                      f"{100 * np.mean([accuracy[s][5] for s in (0, 1)]):.2f}"]


def test_a_grid_without_ccar_cells_is_refused_for_the_ccar_table(tmp_path):
    write_cell(tmp_path, "bs-seed0", [{"epoch": 4, "lr": 0.1, "test": {"balanced_accuracy": 0.5}}])
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--ccar-table", str(tmp_path / "cc.md")], capture_output=True, text=True)
    assert out.returncode == 1 and "no cell recorded CCAR statistics" in out.stderr
    assert not (tmp_path / "cc.md").exists()


def test_car_table_matches_numpy(tmp_path):
    """--car-table: per CAR method at the first, every 25th and last epoch, the seed means of the
    training loss, base loss, alpha x R, R and of each seed's share alpha x R / loss."""
    rng = np.random.default_rng(5)

    def car_records(epochs):
        records = []
        for e in range(epochs):
            base, term = float(rng.uniform(1e-3, 2.0)), float(rng.uniform(1e-6, 0.5))
            records.append({"epoch": e, "lr": 0.1, "loss": base + term, "base_loss": base, "regularizer": term,
                            "spectral_norm": float(rng.uniform(1e-5, 1.0))})
        return records

    seed0, seed1 = car_records(52), car_records(40)  # seed 1 is still training
    write_cell(tmp_path, "car_bs-seed0", seed0)
    write_cell(tmp_path, "car_bs-seed1", seed1)
    write_cell(tmp_path, "bs-seed0", [{"epoch": e, "lr": 0.1, "loss": 1.0, "base_loss": 1.0} for e in range(52)])
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--car-table", str(tmp_path / "car.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "car.md").read_text()
    assert "**car_bs** (2 seeds, still training)" in text and "**bs**" not in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    assert set(rows) == {1, 25, 50, 52}
    for epoch, cells in rows.items():
        present = [h[epoch - 1] for h in (seed0, seed1) if len(h) >= epoch]  # 50, 52: seed 0 only
        mean = lambda key: np.mean([r[key] for r in present])  # noqa: E731
        share = np.mean([r["regularizer"] / (r["base_loss"] + r["regularizer"]) for r in present])
        assert cells == [f"{mean('loss'):.4g}", f"{mean('base_loss'):.4g}", f"{mean('regularizer'):.3g}",
                         f"{100 * share:.2f} %", f"{mean('spectral_norm'):.3g}"], epoch


def test_a_grid_without_car_cells_is_refused_for_the_car_table(tmp_path):
    write_cell(tmp_path, "bs-seed0", [{"epoch": 4, "lr": 0.1, "loss": 1.0, "test": {"balanced_accuracy": 0.5}}])
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--car-table", str(tmp_path / "car.md")], capture_output=True, text=True)
    assert out.returncode == 1 and "no cell recorded CAR statistics" in out.stderr
    assert not (tmp_path / "car.md").exists()


def test_a_seed_still_training_stays_out_of_a_finished_method_s_tables(tmp_path):
    """Seed 0 finished at epoch 30, seed 1 at epoch 6: the tables are seed 0's alone (all 30 epochs,
    not the 6 both reached) and say that one more seed is training; a method with no finished seed
    is the mean of its training seeds, labelled so."""
    rng = np.random.default_rng(9)
    finished = ccar_records(rng, 30)
    write_cell(tmp_path, "ccar_bs-seed0", finished, final={"epochs": 50, "test": {"balanced_accuracy": 0.9}})
    write_cell(tmp_path, "ccar_bs-seed1", ccar_records(rng, 6))
    accuracy = rng.uniform(0.5, 0.9, (2, 10))
    for seed in (0, 1):  # ce: both seeds still training, evaluated every 5th epoch up to 50
        write_cell(tmp_path, f"ce-seed{seed}", [{"epoch": e, "lr": 0.1, "test": {"balanced_accuracy": float(accuracy[seed][e // 5])}}
                                                for e in range(4, 50, 5)])
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--ccar-table", str(tmp_path / "cc.md"), "--table", str(tmp_path / "t.md")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "cc.md").read_text()
    assert "**ccar_bs** (1 seed; 1 more still training, not included)" in text
    rows = parse_rows(text)
    assert {e for e, _ in rows} == {1, 25, 30}
    for (epoch, group), cells in rows.items():
        assert cells[0] == f"{finished[epoch - 1][f'ccar_omega_mean_{group}']:.3f}"  # seed 0 alone
    table = (tmp_path / "t.md").read_text().splitlines()
    [ce] = [line for line in table if line.startswith("| ce (2 seeds, still training) |")]
    assert [c.strip() for c in ce.strip("|").split("|")][1:] == [
        f"{100 * np.mean(accuracy[:, e // 5 - 1]):.2f}" for e in (25, 50)]
    [ccar] = [line for line in table if line.startswith("| ccar_bs (1 seed) |")]
    assert ccar == "| ccar_bs (1 seed) | - | 90.00 |"  # its last epoch (50, from metrics.json), seed 0 alone


def test_episodes_table_finds_the_epochs_a_run_lost_its_fit(tmp_path):
    """--episodes-table on hand-made losses whose episodes are known by construction: a spike that
    recovers, a calm run, and one that has not recovered by its last epoch; the test metric before and
    the lowest during / 5 after are read off the evaluated epochs."""
    rng = np.random.default_rng(3)
    low = rng.uniform(0.0010, 0.0012, 40)  # fitted: losses within 20 % of each other, never 10x apart
    spiky, late = low.copy(), low.copy()
    spiky[20:24] = [0.2, 0.5, 0.05, 0.012]  # epochs 21-24 (1-based) are >= 10 x the low before them
    late[35:] = [0.03, 2.0, 1.5, 0.8, 0.4]  # epochs 36-40: still above 10 x its low at the end
    accuracy = rng.uniform(0.6, 0.99, 8)  # evaluated at epochs 5, 10, ..., 40

    def records(losses):
        return [{"epoch": e, "lr": 0.1, "loss": float(losses[e]),
                 **({"test": {"balanced_accuracy": float(accuracy[e // 5])}} if e % 5 == 4 else {})} for e in range(40)]

    write_cell(tmp_path, "bs-seed0", records(spiky), final={"epochs": 40, "test": {"balanced_accuracy": float(accuracy[7])}})
    write_cell(tmp_path, "bs-seed1", records(low), final={"epochs": 40, "test": {"balanced_accuracy": float(accuracy[7])}})
    write_cell(tmp_path, "ccar_bs-seed0", records(late))  # still training
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--episodes-table", str(tmp_path / "e.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in (tmp_path / "e.md").read_text().splitlines()[2:]]
    percent = lambda value: f"{100 * value:.2f}"  # noqa: E731
    assert rows == [
        ["bs", "0", "21-24", "0.1", f"{low[15:20].min():.4g}", "0.5 (22)", percent(accuracy[3]),  # before: epoch 20
         percent(accuracy[4:6].min())],  # evaluated epochs 25 and 30 lie in 21 .. 24 + 5
        ["bs", "1", "none", "", "", "", "", ""],
        ["ccar_bs", "0 (still training)", "36- (not recovered)", "0.1", f"{low[30:35].min():.4g}", "2 (37)",
         percent(accuracy[6]), percent(accuracy[7])],
    ]


def test_an_episode_ratio_of_one_or_less_is_a_usage_error(tmp_path):
    write_cell(tmp_path, "bs-seed0", [{"epoch": 0, "lr": 0.1, "loss": 1.0}])
    out = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--output", str(tmp_path / "c.png"),
                          "--episodes-table", str(tmp_path / "e.md"), "--episode-ratio", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and "--episode-ratio must be above 1" in out.stderr
    assert not (tmp_path / "e.md").exists() and not (tmp_path / "c.png").exists()
