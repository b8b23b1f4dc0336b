"""FLOPs per sample of the engine and of the reference, counted piece by piece on one sample through the
public pieces they run: the image tower, TPT's step (`tptlib.methods.tpt_step`), the text tower."""
from __future__ import annotations

from .profiling import count_flops


def path_flops(clip, engine, reference, n_views: int, steps: int, class_chunk: int | None) -> dict:
    """FLOPs per sample of each path, counted piece by piece on one sample.

    Engine: the image tower on the views once; per step the text tower forward and backward over
    the classes (the prefix path); with a class chunk and several steps, a forward between steps;
    one forward for the prediction. Reference: per step the image tower on all views and the text
    tower forward and backward at the full context length; the image tower on view 0 and one text
    forward for the prediction. The logits, entropies and AdamW are left out (under 0.1%).
    """
    import torch

    from ..methods.tpt_step import backward, jacobian_grad
    from ..towers import encode_images

    model, dev = clip.model, clip.device
    one = torch.zeros(1, 3, clip.image_size, clip.image_size, device=dev)
    with torch.no_grad(), clip.autocast():
        img_ref = count_flops(lambda: model.encode_image(one))
        img_eng = count_flops(lambda: encode_images(model, one, engine.fast_image))

    prepared = engine.prepared
    text = prepared.class_encoder
    C = len(engine.classnames)
    ctx0 = prepared.prompt.init_ctx.unsqueeze(0).clone()
    n_kept = max(1, int(n_views * engine.method.selection_p))
    kept = torch.nn.functional.normalize(torch.randn(1, n_kept, clip.embed_dim, device=dev), dim=-1)
    chunk = class_chunk if class_chunk and class_chunk < C else None
    init = prepared.init_feats.unsqueeze(0) if prepared.init_feats is not None else None

    def eng_step():
        ctx = ctx0.clone().requires_grad_(True)
        feats = init if init is not None else text.class_features(model, ctx0, chunk)
        with clip.autocast():
            backward(model, text, ctx, kept, feats, clip.logit_scale, chunk, None)

    jac = prepared.jacobian

    def eng_first_step():
        ctx = ctx0.clone().requires_grad_(True)
        with clip.autocast():
            jacobian_grad(jac, ctx, kept, init, clip.logit_scale)

    with clip.autocast():
        eng_step_flops = count_flops(eng_step)
        eng_first_flops = count_flops(eng_first_step) if jac is not None else eng_step_flops
        with torch.no_grad():
            eng_fwd = count_flops(lambda: text.class_features(model, ctx0, chunk))

    # the reference's text tower: every class costs the same at the full length, so count a few and scale
    few = min(C, 4)
    rprompt = reference.prompt

    def ref_step():
        ctx = ctx0.clone().requires_grad_(True)
        with clip.autocast():
            rprompt.encode(model, ctx, slice(0, few)).sum().backward()

    ref_step_flops = count_flops(ref_step) * C / few
    with torch.no_grad(), clip.autocast():
        ref_fwd = count_flops(lambda: rprompt.encode(model, ctx0, slice(0, few))) * C / few

    engine_total = n_views * img_eng + (eng_first_flops + (steps - 1) * eng_step_flops if steps else 0) \
        + (max(0, steps - 1) * eng_fwd if chunk else 0) + (eng_fwd if steps else 0)
    reference_total = steps * (n_views * img_ref + ref_step_flops) + img_ref + ref_fwd
    return {"engine_per_sample": engine_total, "reference_per_sample": reference_total,
            "parts": {"image_per_view_reference": img_ref, "image_per_view_engine": img_eng,
                      "text_step_engine": eng_step_flops, "text_first_step_engine": eng_first_flops,
                      "text_forward_engine": eng_fwd,
                      "text_step_reference": ref_step_flops, "text_forward_reference": ref_fwd}}
