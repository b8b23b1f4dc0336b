"""Faithful one-sample ports of the peers' own code, on view features: what the tests hold the library's
methods to, sample by sample (as `tptlib.reference` does for TPT).

Each port follows the authors' function step by step -- the same operations in the same order, the same
tie-breaks, the same in-place updates -- written over precomputed, L2-normalised view features instead
of images (the authors' loops encode the images first; nothing after that depends on how). Each names
the file and commit it follows. The methods in `tptlib.methods` are written for batches, streams and
resumable state; these are written to be read against the originals.

    ZERO   FarinaMatteo/zero @ c609f7c   ttas/zero.py (Zero.zero), ttas/base.py (confidence_filter),
                                        utils/tools.py (greedy_break, break_sample_tie)
    MTA    MaxZanella/MTA @ cafafdf      mta.py (solve_mta, gaussian_kernel)
    C-TPT  hee-suk-yoon/C-TPT @ 085e6c2  tpt_classification.py (test_time_tuning), clip/custom_clip.py
                                        (the l2_norm_mean of ClipTestTimeTuning.inference)
    TDA    kdiAAA/TDA @ e697fb0          tda_runner.py (run_test_tda, update_cache,
                                        compute_cache_logits), utils.py (get_clip_logits, get_entropy)
    DMN    YBZh/DMN @ c6c218c            dmn_main.py (direct_inference, DualMem.update_memory_bank,
                                        DualMem.get_image_pred, select_confident_samples)
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

from .objectives import marginal_entropy
from .reference import ReferenceTPT

# ------------------------------------------------------------------------------------------------
# ZERO


def zero_reference(z_img: torch.Tensor, z_txt: torch.Tensor, logit_scale: torch.Tensor, gamma: float = 0.3) -> torch.Tensor:
    """`Zero.zero` on one image's view features `z_img` `[V, D]` (view 0 first) and class features `z_txt`
    `[C, D]`; `logit_scale` is CLIP's parameter (log scale). Returns p_bar `[1, C]` as the authors do."""
    temp = 1 / logit_scale.exp()                              # ClipWrapper.temp
    l = z_img @ z_txt.t()                                     # unscaled logits
    p = (l / temp).softmax(1)
    batch_entropy = -(p * p.log()).sum(1)                     # confidence_filter
    full_idx = torch.argsort(batch_entropy, descending=False)
    filt_idx = full_idx[:int(batch_entropy.size()[0] * gamma)]
    l_filt, sorted_idx = l[filt_idx], full_idx
    zero_temp = torch.finfo(l_filt.dtype).eps
    p_bar = (l_filt / zero_temp).softmax(1).sum(0)
    max_counts, scalar_pred = torch.max(p_bar, dim=-1)
    ties = [scalar_pred]
    for i in range(len(p_bar)):
        if i == scalar_pred:
            continue
        if p_bar[i] == max_counts:
            ties.append(i)
    if len(ties) > 1:
        k = int(z_img.size(0) * gamma)
        sorted_l = l[sorted_idx]
        scalar_pred = _greedy_break(ties, sorted_l[k:], device=l.device)
        p_bar[scalar_pred] += 1
    return p_bar.unsqueeze(0)


def _break_sample_tie(ties, logit, device):
    ties = torch.tensor(ties, dtype=torch.int, device=device)
    logit[~ties] = -torch.inf
    return torch.argmax(logit, dim=-1)


def _greedy_break(ties, logits, device):
    ties_tensor = torch.tensor(ties, dtype=torch.int, device=device)
    preds = torch.argmax(logits, dim=1)
    for pred in preds:
        if pred in ties_tensor:
            return pred
    return _break_sample_tie(ties, logit=logits[0], device=device)


# ------------------------------------------------------------------------------------------------
# MTA


def _gaussian_kernel(mu, bandwidth, datapoints):
    dist = torch.norm(datapoints - mu, dim=-1, p=2)
    return torch.exp(-dist ** 2 / (2 * bandwidth ** 2))


def mta_reference(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                  lambda_y: float = 0.2, lambda_q: float = 4) -> torch.Tensor:
    """`solve_mta` after the model's forward: view features `[N, D]`, class features `[C, D]`,
    `logit_scale` = exp of CLIP's parameter. Returns the output logits `[1, C]`."""
    logits = image_features @ text_features.t() * logit_scale
    max_iter, temperature = 5, 1
    batch_size = image_features.shape[0]
    dist = torch.cdist(image_features, image_features)
    sorted_dist, _ = torch.sort(dist, dim=1)
    k = int(0.3 * (image_features.shape[0] - 1))
    selected_distances = sorted_dist[:, 1:k + 1] ** 2
    mean_distance = torch.mean(selected_distances, dim=1)
    bandwidth = torch.sqrt(0.5 * mean_distance)
    affinity_matrix = (logits / temperature).softmax(1) @ (logits / temperature).softmax(1).t()
    y = torch.ones(batch_size, device=image_features.device) / batch_size
    mode = image_features[0]
    convergence, th, it = False, 1e-6, 0
    while not convergence:
        density = _gaussian_kernel(mode, bandwidth, image_features)
        convergence_inlierness, i = False, 0
        while not convergence_inlierness:
            i += 1
            old_y = y
            weighted_affinity = affinity_matrix * y.unsqueeze(0)
            y = F.softmax(1 / lambda_y * (density + lambda_q * torch.sum(weighted_affinity, dim=1)), dim=-1)
            if torch.norm(old_y - y) < th or i >= max_iter:
                convergence_inlierness = True
        convergence_mode, i = False, 0
        while not convergence_mode:
            i += 1
            old_mode = mode
            density = _gaussian_kernel(mode, bandwidth, image_features)
            weighted_density = density * y
            mode = torch.sum(weighted_density.unsqueeze(1) * image_features, dim=0) / torch.sum(weighted_density)
            mode /= mode.norm(p=2, dim=-1)
            if torch.norm(old_mode - mode) < th or i >= max_iter:
                convergence_mode = True
        it += 1
        if it >= max_iter:
            convergence = True
    return mode.unsqueeze(0) @ text_features.t() * logit_scale


# ------------------------------------------------------------------------------------------------
# C-TPT


class ReferenceCTPT(ReferenceTPT):
    """C-TPT's `test_time_tuning` with `run_type='tpt_ctpt'`: TPT's loop (`ReferenceTPT`) with the loss
    avg_entropy(kept views) - lambda * l2_norm_mean, where l2_norm_mean is the mean distance of the
    normalised class features to their mean, from the same forward."""

    def __init__(self, clip, classnames, lambda_term: float, **kwargs):
        super().__init__(clip, classnames, **kwargs)
        self.lambda_term = lambda_term

    def inference(self, images):
        """`ClipTestTimeTuning.inference` with `l2_norm_cal`: the logits, and the dispersion of the
        class features of this same forward kept for the loss."""
        with torch.no_grad():
            image_features = F.normalize(self.clip.model.encode_image(images).float(), dim=-1)
        text_features = self.text_features()
        prompt_mean = text_features.mean(0)
        feature_distance = text_features - prompt_mean
        l2_norm = torch.linalg.norm(feature_distance, dim=-1)
        self.l2_norm_mean_training = l2_norm.mean()
        return self.clip.logit_scale * image_features @ text_features.T

    def loss(self, kept_logits):
        return marginal_entropy(kept_logits) + (-self.lambda_term * self.l2_norm_mean_training)


# ------------------------------------------------------------------------------------------------
# TDA


class TDAReference:
    """`run_test_tda`'s loop body, one test sample per `step`, on view features. `clip_weights` is the
    authors' `[D, C]` classifier; `scale` the constant they multiply by (a literal 100. in `utils.py`)."""

    def __init__(self, clip_weights: torch.Tensor, pos_cfg: dict, neg_cfg: dict, scale: float = 100.):
        self.clip_weights, self.scale = clip_weights, scale
        self.pos_cfg, self.neg_cfg = pos_cfg, neg_cfg
        self.pos_cache, self.neg_cache = {}, {}

    def get_clip_logits(self, image_features):
        clip_logits = self.scale * image_features @ self.clip_weights
        if image_features.size(0) > 1:
            batch_entropy = _softmax_entropy(clip_logits)
            selected_idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * 0.1)]
            output = clip_logits[selected_idx]
            image_features = image_features[selected_idx].mean(0).unsqueeze(0)
            clip_logits = output.mean(0).unsqueeze(0)
            loss = _avg_entropy(output)
            prob_map = output.softmax(1).mean(0).unsqueeze(0)
            pred = int(output.mean(0).unsqueeze(0).topk(1, 1, True, True)[1].t())
        else:
            loss = _softmax_entropy(clip_logits)
            prob_map = clip_logits.softmax(1)
            pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
        return image_features, clip_logits, loss, prob_map, pred

    def step(self, image_features: torch.Tensor) -> torch.Tensor:
        pos, neg = self.pos_cfg, self.neg_cfg
        image_features, clip_logits, loss, prob_map, pred = self.get_clip_logits(image_features)
        prop_entropy = float(loss / math.log2(self.clip_weights.size(1)))      # get_entropy
        _update_cache(self.pos_cache, pred, [image_features, loss], pos["shot_capacity"])
        if neg["entropy_threshold"]["lower"] < prop_entropy < neg["entropy_threshold"]["upper"]:
            _update_cache(self.neg_cache, pred, [image_features, loss, prob_map], neg["shot_capacity"], True)
        final_logits = clip_logits.clone()
        if self.pos_cache:
            final_logits += _compute_cache_logits(image_features, self.pos_cache, pos["alpha"], pos["beta"],
                                                  self.clip_weights)
        if self.neg_cache:
            final_logits -= _compute_cache_logits(image_features, self.neg_cache, neg["alpha"], neg["beta"],
                                                  self.clip_weights, (neg["mask_threshold"]["lower"],
                                                                      neg["mask_threshold"]["upper"]))
        return final_logits


def _softmax_entropy(x):
    return -(x.softmax(1) * x.log_softmax(1)).sum(1)


def _avg_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logits = logits.logsumexp(dim=0) - np.log(logits.shape[0])
    min_real = torch.finfo(avg_logits.dtype).min
    avg_logits = torch.clamp(avg_logits, min=min_real)
    return -(avg_logits * torch.exp(avg_logits)).sum(dim=-1)


def _update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False):
    item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
    if pred in cache:
        if len(cache[pred]) < shot_capacity:
            cache[pred].append(item)
        elif features_loss[1] < cache[pred][-1][1]:
            cache[pred][-1] = item
        cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
    else:
        cache[pred] = [item]


def _compute_cache_logits(image_features, cache, alpha, beta, clip_weights, neg_mask_thresholds=None):
    cache_keys, cache_values = [], []
    for class_index in sorted(cache.keys()):
        for item in cache[class_index]:
            cache_keys.append(item[0])
            cache_values.append(item[2] if neg_mask_thresholds else class_index)
    cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
    if neg_mask_thresholds:
        cache_values = torch.cat(cache_values, dim=0)
        cache_values = ((cache_values > neg_mask_thresholds[0]) & (cache_values < neg_mask_thresholds[1])).type(torch.int8).float()
    else:
        cache_values = F.one_hot(torch.Tensor(cache_values).to(torch.int64), num_classes=clip_weights.size(1)).float()
    affinity = image_features @ cache_keys
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
    return alpha * cache_logits


# ------------------------------------------------------------------------------------------------
# DMN (zero-shot)


class DMNReference:
    """`direct_inference` of DMN with `n_shot=0` on view features, one test sample per `step`. `text_feat`
    `[C, D]` is the model's (normalised) class features; `logit_scale` CLIP's parameter (log scale).
    Returns the two predictions the authors mix after the run: view 0's text prediction and the dynamic
    memory's, both probabilities `[1, C]`."""

    def __init__(self, text_feat: torch.Tensor, logit_scale: torch.Tensor, memory_size: int = 50, beta: float = 5.5,
                 selection_p: float = 0.1):
        n_cls, dim = text_feat.shape
        self.text_feat, self.logit_scale = text_feat, logit_scale
        self.memory_size, self.beta, self.selection_p = memory_size, beta, selection_p
        self.fixed_global_feat_vanilla = text_feat.clone().unsqueeze(1)
        self.image_feature_memory = torch.zeros(n_cls, memory_size, dim)
        self.image_prediction_mem = torch.zeros(n_cls, memory_size, n_cls)
        self.image_entropy_mem = torch.zeros(n_cls, memory_size)
        self.image_feature_count = torch.zeros(n_cls, 1).long()
        # DualMem's parameters with mapping='bias', position='all', zero-initialised and untrained
        self.global_bias = torch.zeros(n_cls, dim)
        self.global_bias_key = torch.zeros(n_cls, dim)
        self.global_bias_value = torch.zeros(n_cls, dim)
        self.global_ffn_bias = torch.zeros(n_cls, dim)
        self.text_bias = torch.zeros(n_cls, dim)

    def get_text_prediction(self, image_features_global):
        text_feat = self.text_feat + self.text_bias
        text_feat = text_feat / text_feat.norm(dim=1, keepdim=True)
        return (self.logit_scale.exp() * image_features_global @ text_feat.t()).softmax(-1)

    def update_memory_bank(self, image_features_global, init_pred):
        mean_prob = init_pred[0]
        value, indice = mean_prob.max(0)
        pseudo_label = indice.item()
        selected_image_features_global = image_features_global[:1]
        current_instance_entropy = -(mean_prob * (torch.log(mean_prob + 1e-8))).sum()
        if self.image_feature_count[pseudo_label] == self.memory_size:
            if (current_instance_entropy < self.image_entropy_mem[pseudo_label]).sum() == 0:
                pass
            else:
                _, indice = torch.sort(self.image_entropy_mem[pseudo_label])
                to_replace_indice = indice[-1]
                self.image_feature_memory[pseudo_label][to_replace_indice] = selected_image_features_global
                self.image_prediction_mem[pseudo_label][to_replace_indice] = mean_prob[0]
                self.image_entropy_mem[pseudo_label][to_replace_indice] = current_instance_entropy
        else:
            count = self.image_feature_count[pseudo_label, 0].item()
            self.image_feature_memory[pseudo_label][count] = selected_image_features_global
            self.image_prediction_mem[pseudo_label][count] = mean_prob[0]
            self.image_entropy_mem[pseudo_label][count] = current_instance_entropy
            self.image_feature_count[pseudo_label] += 1

    def get_image_pred(self, image_features_global):
        img_feat = image_features_global[:1]
        memorized_image_feat = torch.cat((self.image_feature_memory, self.fixed_global_feat_vanilla), dim=1)
        img_feat_mappling = img_feat + self.global_bias.mean(0, keepdim=True)
        memorized_image_feat_K = memorized_image_feat + self.global_bias_key.unsqueeze(1)
        memorized_image_feat_V = memorized_image_feat + self.global_bias_value.unsqueeze(1)
        memorized_image_feat_K = memorized_image_feat_K / memorized_image_feat_K.norm(dim=-1, keepdim=True)
        memorized_image_feat_K[memorized_image_feat.sum(-1) == 0] = 0
        memorized_image_feat_V = memorized_image_feat_V / memorized_image_feat_V.norm(dim=-1, keepdim=True)
        memorized_image_feat_V[memorized_image_feat.sum(-1) == 0] = 0
        img_feat_mappling = img_feat_mappling / img_feat_mappling.norm(dim=-1, keepdim=True)
        similarity_matrix = (img_feat_mappling * memorized_image_feat_K).sum(-1)
        similarity_matrix = torch.exp(-self.beta * (-similarity_matrix + 1))
        adaptive_image_feat = (memorized_image_feat_V * similarity_matrix.unsqueeze(-1)).sum(1)
        adaptive_image_feat = adaptive_image_feat / adaptive_image_feat.norm(dim=-1, keepdim=True)
        adaptive_image_feat = adaptive_image_feat + self.global_ffn_bias.unsqueeze(0)
        adaptive_image_feat = adaptive_image_feat / adaptive_image_feat.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * adaptive_image_feat @ img_feat.unsqueeze(-1)
        return logits[:, :, 0].softmax(dim=1)

    def step(self, image_features_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_text = self.get_text_prediction(image_features_global)
        img_text_pred = img_text[:1]
        batch_entropy = -(img_text * torch.log(img_text + 1e-6)).sum(1)     # select_confident_samples
        idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * self.selection_p)]
        init_pred = img_text[idx].mean(0, keepdim=True)
        self.update_memory_bank(image_features_global, init_pred)
        img_global_pred = self.get_image_pred(image_features_global)
        return img_text_pred, img_global_pred


__all__ = ["zero_reference", "mta_reference", "ReferenceCTPT", "TDAReference", "DMNReference"]
