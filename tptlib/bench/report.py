"""The benchmark's results as the table `tpt bench` prints."""
from __future__ import annotations


def _fmt_mem(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 10 * 2**30 else f"{b / 2**30:,.1f} GiB"


def format_table(res: dict) -> str:
    cfg = res["config"]
    e, r, a = res["engine"], res["reference"], res["agreement"]
    lines = [
        f"tpt bench: {cfg['model']} ({cfg['weights']}), {cfg['classes']} classes ({cfg['class_source']}'s first "
        f"{cfg['classes']}), {cfg['views']} views, {cfg['steps']} step(s), {cfg['device_name']}, "
        f"precision {cfg['precision']}, {cfg['threads']} CPU threads",
    ]
    has_f = "flops" in res
    head = f"{'path':<22}{'samples':>8}{'samples/s':>11}{'s/sample':>10}{'peak mem':>12}"
    if has_f:
        head += f"{'GFLOP/sample':>14}{'limit/s':>10}{'of limit':>10}"
    lines += ["", head, "-" * len(head)]
    eng_name = f"engine (batch {e['batch_size']}{', jacobian' if e.get('jacobian') else ''})"
    for name, p, key in ((eng_name, e, "engine"), ("reference (1 at a time)", r, "reference")):
        sps = p["samples_per_s"]
        row = (f"{name:<22}{p['samples']:>8}{sps:>11.4g}{(1 / sps if sps else float('nan')):>10.3g}"
               f"{_fmt_mem(p['peak_bytes']):>12}")
        if has_f:
            fl = res["flops"][f"{key}_per_sample"]
            lim = res["limit"][f"{key}_samples_per_s"]
            row += f"{fl / 1e9:>14,.0f}{lim:>10.4g}{sps / lim:>10.1%}"
        lines.append(row)
    lines.append("")
    lines.append(f"speed-up engine / reference: {res['ratio']:.2f}x wall time, {res['ratio_cpu_time']:.2f}x process "
                 f"CPU time" + (f"   (FLOP ratio {res['limit']['flop_ratio']:.2f}x)" if has_f else ""))
    mem_ratio = r["peak_bytes"] / e["peak_bytes"] if e["peak_bytes"] else float("nan")
    lines.append(f"peak memory reference / engine: {mem_ratio:.2f}x")
    lines.append(f"agreement on the {a['samples']} samples both ran: identical argmax {a['identical_argmax']}/"
                 f"{a['samples']} ({a['identical_argmax_share']:.1%}), max |logit diff| {a['max_abs_logit_diff']:.2e}, "
                 f"identical kept views {a['identical_kept']}/{a['samples']}, max |loss diff| {a['max_abs_loss_diff']:.2e}")
    if e.get("jacobian"):
        lines.append(f"engine setup {e['setup_s']:.3g} s with the context Jacobian, as long as "
                     f"{e['setup_s'] * e['samples_per_s']:.0f} samples of the engine's tuning (not in samples/s)")
    stages = e.get("stage_seconds") or {}
    if stages and e["samples"]:
        total = sum(stages.values())
        parts = res.get("flops", {}).get("parts", {})
        stage_flops = {"image": cfg["views"] * parts["image_per_view_engine"],
                       "method": res["flops"]["engine_per_sample"] - cfg["views"] * parts["image_per_view_engine"]
                       } if parts else {}
        cells = []
        for key, label in (("image", "image tower"), ("method", "tuning + prediction")):
            sec = stages.get(key, 0.0) / e["samples"]
            rate = f", {stage_flops[key] / sec / 1e9:,.0f} GFLOP/s" if stage_flops and sec else ""
            cells.append(f"{label} {sec:.3g} s ({stages.get(key, 0.0) / total:.0%}{rate})")
        lines.append("engine time per sample: " + ", ".join(cells))
    if has_f:
        pk = res["device_peak"]
        nominal = (f"; nominal {pk['nominal_flops'] / 1e12:,.0f} TFLOP/s ({pk['nominal_note']})"
                   if "nominal_flops" in pk else "")
        lines.append(f"device peak: {pk['measured_flops'] / 1e9:,.1f} GFLOP/s measured ({pk['how']}){nominal}")
    return "\n".join(lines)
