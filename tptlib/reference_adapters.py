"""Faithful ports of the authors' code of DPE, BoostAdapter, TPS and R-TPT, on view features: what the tests
hold `tptlib.methods.dpe`, `.boostadapter`, `.tps` and `.rtpt` to (as `tptlib.reference_peers` does for
ZERO, MTA, C-TPT, TDA and DMN).

Each port follows the authors' loop body step by step -- the same operations in the same order, the same
cache bookkeeping, the same optimiser and the same tie-breaks -- written over precomputed, L2-normalised
view features instead of images, on the CPU in fp32 (the authors run fp16 autocast on a GPU). All three
repositories are MIT-licensed; each port names the file and commit it follows.

    DPE           zhangce01/DPE-CLIP @ fecae5a    main_dpe.py (run_test_dpe, update_cache, cache_key_value,
                                                 compute_cache_logits, TextResidue, PositiveCacheResidue),
                                                 utils.py (get_clip_logits, avg_entropy, get_entropy);
                                                 the InfoNCE it imports is info-nce-pytorch 0.1.4
                                                 (RElbers/info-nce-pytorch @ a2a9c12, `info_nce`, MIT)
    BoostAdapter  taolinzhang/BoostAdapter @ 9983e1a   runner.py (run_test_tda in mode "boostadapter",
                                                 update_cache, compute_cache_logits), utils.py
                                                 (get_clip_logits, select_confident_samples,
                                                 get_output_entropy)
    TPS           elaine-sui/TPS @ 556db0f        shift_classification.py (test_time_tuning, run_shift_iter,
                                                 test_time_adapt_eval), model/learnable_shift.py
                                                 (TestTimeShiftTuning.forward), model/shifter.py (Shifter),
                                                 run_utils.py (select_confident_samples, avg_entropy)
    R-TPT         TomSheng21/R-TPT @ e085f13      rtpt.py (test_time_tuning, entropy_avg, get_top_sim, the loop
                                                 body of test_time_adapt_eval with --eps 0.0), on `ReferenceTPT`
"""
from __future__ import annotations

import copy
import math
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .reference import ReferenceTPT
from .reference_peers import TDAReference, _avg_entropy, _softmax_entropy, _update_cache


def _get_entropy(loss, clip_weights):
    return float(loss / np.log2(clip_weights.size(1)))


def _get_clip_logits(image_features, clip_weights, scale):
    """utils.py `get_clip_logits` after the image encoder: DPE's and BoostAdapter's copy TDA's (DPE's without
    its `torch.no_grad`, which the TDA port does not have either)."""
    return TDAReference(clip_weights, {}, {}, scale).get_clip_logits(image_features)


# ------------------------------------------------------------------------------------------------
# DPE


def _info_nce(query, positive_key, temperature=0.1):
    """info-nce-pytorch's `info_nce` without explicit negative keys, reduction 'mean'."""
    query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
    logits = query @ positive_key.transpose(-2, -1)
    labels = torch.arange(len(query), device=query.device)
    return F.cross_entropy(logits / temperature, labels, reduction="mean")


def _dpe_update_cache(cache, pred, features_loss, shot_capacity):
    """main_dpe.py `update_cache`: TDA's under `torch.no_grad`, without the negative cache's option."""
    with torch.no_grad():
        _update_cache(cache, pred, features_loss, shot_capacity)


def _cache_key_value(image_features, cache, clip_weights):
    with torch.no_grad():
        cache_keys, cache_values, all_classes = [], [], []
        for class_index in sorted(cache.keys()):
            num_items = len(cache[class_index])
            image_prototype = torch.zeros_like(image_features)
            for item in cache[class_index]:
                image_prototype += item[0] / num_items
            cache_keys.append(image_prototype)
            cache_values.append(class_index)
            all_classes.append(class_index)
        cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
        cache_values = F.one_hot(torch.Tensor(cache_values).to(torch.int64), num_classes=clip_weights.size(1)).float()
        return cache_keys, cache_values, all_classes


def _dpe_cache_logits(image_features, cache_keys, cache_values, alpha, beta):
    affinity = image_features @ cache_keys
    return alpha * (((-1) * (beta - beta * affinity)).exp() @ cache_values)


class _TextResidue(nn.Module):
    def __init__(self, clip_weights):
        super().__init__()
        self.feat_dim, self.cate_num = clip_weights.shape
        self.residual = nn.Parameter(torch.zeros([self.feat_dim, self.cate_num]), requires_grad=True)

    def forward(self, x):
        return F.normalize(x.clone() + self.residual, dim=0)


class _PositiveCacheResidue(nn.Module):
    def __init__(self, pos_cache_keys):
        super().__init__()
        self.feat_dim, self.cache_size = pos_cache_keys.shape
        self.residual = nn.Parameter(torch.zeros([self.feat_dim, self.cache_size]), requires_grad=True)

    def forward(self, x):
        return F.normalize(x.clone() + self.residual, dim=0)


class DPEReference:
    """`run_test_dpe`'s loop body, one test sample per `step`, on view features. `clip_weights` is the
    authors' `[D, C]` classifier; `scale` the constant they multiply by (a literal 100. in `utils.py`);
    `multiview`: the sample arrives as its 64 views (their ImageNet family) or as the image alone;
    `final_all_views`: the prediction reads all views again (`dataset_name == 'A'`) or view 0."""

    def __init__(self, clip_weights, pos_cfg: dict, lr_cfg: dict, scale: float = 100., multiview: bool = True,
                 final_all_views: bool = False):
        self.pos_params = {k: pos_cfg[k] for k in ["shot_capacity", "alpha", "beta"]}
        self.lr_cfg, self.scale = lr_cfg, scale
        self.multiview, self.final_all_views = multiview, final_all_views
        self.clip_weights = clip_weights
        self.clip_weights_global = clip_weights.clone()
        self.pos_cache, self.num_avg = {}, 0

    def step(self, views: torch.Tensor) -> torch.Tensor:
        images = views if self.multiview else views[:1]
        pos_params, lr_cfg, clip_weights, pos_cache = self.pos_params, self.lr_cfg, self.clip_weights, self.pos_cache
        clip_weights_local = self.clip_weights_global.clone().detach()
        text_residue = _TextResidue(clip_weights_local)
        new_clip_weights = text_residue(clip_weights_local)
        image_features_x, clip_logits, entropy, prob_map, pred = _get_clip_logits(images, new_clip_weights, self.scale)
        entropy = _get_entropy(entropy, clip_weights)
        _dpe_update_cache(pos_cache, pred, [image_features_x, entropy], pos_params["shot_capacity"])
        pos_cache_keys, pos_cache_values, all_classes = _cache_key_value(image_features_x, pos_cache, clip_weights)
        pos_cache_residue = _PositiveCacheResidue(pos_cache_keys)
        new_clip_weights = text_residue(clip_weights_local)
        final_logits = clip_logits.clone()
        new_pos_cache_keys = pos_cache_residue(pos_cache_keys)
        final_logits += _dpe_cache_logits(image_features_x, new_pos_cache_keys, pos_cache_values,
                                          pos_params["alpha"], pos_params["beta"])
        loss = _avg_entropy(final_logits)
        image2text_loss = _info_nce(new_pos_cache_keys.T, new_clip_weights[:, all_classes].T, temperature=0.01)
        loss += image2text_loss * lr_cfg["align"]
        optimizer = torch.optim.AdamW([
            {"params": text_residue.parameters(), "lr": lr_cfg["text"], "eps": 1e-3, "weight_decay": 1e-1},
            {"params": pos_cache_residue.parameters(), "lr": lr_cfg["image"], "eps": 1e-3, "weight_decay": 1e-1}])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        with torch.no_grad():
            new_clip_weights = text_residue(clip_weights_local)
            final_images = views if self.final_all_views else views[:1]
            image_features, clip_logits, _, _, _ = _get_clip_logits(final_images, new_clip_weights, self.scale)
            final_logits = clip_logits.clone()
            new_pos_cache_keys = pos_cache_residue(pos_cache_keys)
            final_logits += _dpe_cache_logits(image_features, new_pos_cache_keys, pos_cache_values,
                                              pos_params["alpha"], pos_params["beta"])
            loss = _avg_entropy(final_logits)
            if _get_entropy(loss, clip_weights) < 0.1:
                self.num_avg += 1
                self.clip_weights_global = (self.clip_weights_global * (self.num_avg / (self.num_avg + 1))
                                            + new_clip_weights * (1 / (self.num_avg + 1)))
        return final_logits


# ------------------------------------------------------------------------------------------------
# BoostAdapter


def _boost_update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False, fifo=True):
    with torch.no_grad():
        item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
        if pred in cache:
            cache[pred].append(item)
            if fifo:
                if len(cache[pred]) > shot_capacity:
                    cache[pred] = cache[pred][1:]
            else:
                cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
                cache[pred] = cache[pred][:shot_capacity]
        else:
            cache[pred] = [item]


def _boost_cache_logits(image_features, cache, alpha, beta, clip_weights, neg_mask_thresholds=None):
    with torch.no_grad():
        cache_keys, cache_values = [], []
        for class_index in sorted(cache.keys()):
            for item in cache[class_index]:
                cache_keys.append(item[0])
                cache_values.append(item[2] if neg_mask_thresholds else class_index)
        if len(cache_keys) == 0:
            return torch.zeros(1)[0]
        cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
        if neg_mask_thresholds:
            cache_values = torch.cat(cache_values, dim=0)
            cache_values = ((cache_values > neg_mask_thresholds[0]) & (cache_values < neg_mask_thresholds[1])).type(torch.int8).float()
        else:
            cache_values = F.one_hot(torch.Tensor(cache_values).to(torch.int64), num_classes=clip_weights.size(1)).float()
        affinity = image_features @ cache_keys
        return alpha * (((-1) * (beta - beta * affinity)).exp() @ cache_values)


def _select_confident_samples(feat, logits, top):
    batch_entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * top)]
    return feat[idx], logits[idx], idx


def _get_output_entropy(outputs):
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    return -(logits * torch.exp(logits)).sum(dim=-1)


class BoostAdapterReference:
    """`run_test_tda` with `--mode boostadapter`, one test sample per `step`, on view features (all the
    sample's views; one on their ImageNet). `infer_ori_image`: the historical path reads view 0 only
    (their cross-datasets) instead of the 10% most confident views (their ImageNet shifts)."""

    def __init__(self, clip_weights, pos_cfg: dict, neg_cfg: dict, delta: int, scale: float = 100.,
                 infer_ori_image: bool = False):
        self.clip_weights, self.scale, self.delta, self.infer_ori_image = clip_weights, scale, delta, infer_ori_image
        self.pos_params = {k: pos_cfg[k] for k in ["shot_capacity", "alpha", "beta"]}
        self.neg_params = {k: neg_cfg[k] for k in ["shot_capacity", "alpha", "beta", "entropy_threshold",
                                                   "mask_threshold"]}
        self.pos_cache, self.neg_cache = {}, {}

    def get_clip_logits(self, image_features):
        clip_logits = self.scale * image_features @ self.clip_weights
        ori_feat, ori_output = image_features.detach().clone(), clip_logits.detach().clone()
        if image_features.size(0) > 1 and self.infer_ori_image:
            loss = _softmax_entropy(clip_logits[:1])
            prob_map = clip_logits[:1].softmax(1)
            pred = int(clip_logits[:1].topk(1, 1, True, True)[1].t()[0])
            return image_features[:1], clip_logits[:1], loss, prob_map, pred, ori_feat, ori_output
        return (*_get_clip_logits(image_features, self.clip_weights, self.scale), ori_feat, ori_output)

    def step(self, image_features: torch.Tensor) -> torch.Tensor:
        pos_params, neg_params, clip_weights = self.pos_params, self.neg_params, self.clip_weights
        pos_cache, neg_cache = self.pos_cache, self.neg_cache
        image_features, clip_logits, loss, prob_map, pred, ori_feat, ori_output = self.get_clip_logits(image_features)
        prop_entropy = _get_entropy(loss, clip_weights)
        _boost_update_cache(pos_cache, pred, [image_features, loss], pos_params["shot_capacity"], fifo=False)
        select_feat, select_output, select_idx = _select_confident_samples(ori_feat, ori_output, 0.1)
        select_entropy = _get_output_entropy(select_output)
        cur_pos_cache = copy.deepcopy(pos_cache)
        for i in range(select_entropy.shape[0]):
            cur_pred = int(select_output[i].argmax(dim=-1).item())
            cur_feat = select_feat[i]
            _boost_update_cache(cur_pos_cache, cur_pred, [cur_feat.unsqueeze(0), select_entropy[i].item()],
                                pos_params["shot_capacity"] + self.delta, fifo=False)
        if neg_params["entropy_threshold"]["lower"] < prop_entropy < neg_params["entropy_threshold"]["upper"]:
            _boost_update_cache(neg_cache, pred, [image_features, loss, prob_map], neg_params["shot_capacity"], True)
        final_logits = clip_logits.clone()
        if pos_cache:
            final_logits += _boost_cache_logits(image_features, cur_pos_cache, pos_params["alpha"], pos_params["beta"],
                                                clip_weights)
        if neg_cache:
            final_logits -= _boost_cache_logits(image_features, neg_cache, neg_params["alpha"], neg_params["beta"],
                                                clip_weights, (neg_params["mask_threshold"]["lower"],
                                                               neg_params["mask_threshold"]["upper"]))
        return final_logits


# ------------------------------------------------------------------------------------------------
# TPS


class _Shifter(nn.Module):
    """model/shifter.py `Shifter` with do_shift, per_label, no scale and no concepts expansion."""

    def __init__(self, embed_dim, num_classes):
        super().__init__()
        shift_init = torch.zeros((num_classes, embed_dim))
        self.shift_init_state = shift_init.detach().clone()
        self.shift = nn.Parameter(shift_init)

    def reset(self):
        self.shift.copy_(self.shift_init_state)

    def forward(self, x, test=False):
        x += self.shift
        return x


class TPSReference:
    """`test_time_adapt_eval`'s loop body with `--text_shift --do_shift --per_label`, one sample per
    `predict`, on view features `[V, D]` (view 0 first). `text_embeds` `[C, D]` are the cached prototypes;
    `logit_scale` CLIP's parameter (log scale). The AMP GradScaler is left out (its scaling and unscaling
    of the gradient is an identity in fp32 up to rounding)."""

    def __init__(self, text_embeds, logit_scale, lr: float = 5e-3, tta_steps: int = 1, selection_p: float = 0.1):
        self.text_embeds, self.logit_scale = text_embeds, logit_scale
        self.tta_steps, self.selection_p = tta_steps, selection_p
        self.text_shifter = _Shifter(text_embeds.shape[1], text_embeds.shape[0])
        self.optimizer = torch.optim.AdamW(list(self.text_shifter.parameters()), lr)
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())

    @torch.enable_grad()
    def forward(self, image_features, test=False):
        text_features = F.normalize(self.text_embeds, dim=-1)
        text_features = self.text_shifter(text_features, test)
        text_features = F.normalize(text_features, dim=-1)
        logits = self.logit_scale.exp() * text_features @ image_features.T
        return logits.T

    def predict(self, views: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.text_shifter.reset()
        self.optimizer.load_state_dict(self.optim_state)
        for _ in range(self.tta_steps):
            output = self.forward(views)
            batch_entropy = -(output.softmax(1) * output.log_softmax(1)).sum(1)
            idx = torch.argsort(batch_entropy, descending=False)[:int(batch_entropy.size()[0] * self.selection_p)]
            loss = _avg_entropy(output[idx])
            self.optimizer.zero_grad()
            loss.backward(retain_graph=True)
            self.optimizer.step()
        with torch.no_grad():
            return self.forward(views[:1], test=True)


# ------------------------------------------------------------------------------------------------
# R-TPT


def _get_top_sim(sim_matrix):
    k = 20  # use 20 neighbor
    sim_matrix[sim_matrix >= 1.0] = float('-inf')
    top_k_values, _ = sim_matrix.topk(k, dim=-1)
    return top_k_values.mean(dim=-1)


def _entropy_avg(outputs):
    batch_entropy = -(outputs.softmax(1) * outputs.log_softmax(1)).sum(1)
    return batch_entropy.mean()


class RTPTReference(ReferenceTPT):
    """rtpt.py's loop body with `--eps 0.0` (clean images), one sample per `predict`, on L2-normalised view
    features `[V, D]` (view 0 first) in place of the images: `forward_features` and `inference` after the
    image encoder, fp32 and no GradScaler, as theirs. The context, its reset and AdamW are `ReferenceTPT`'s.
    exact_self: set each view's similarity to itself to exactly 1.0 before `get_top_sim`, which then
    always leaves it out (theirs leaves it out only when rounding makes it 1.0 or more)."""

    def __init__(self, clip, classnames, exact_self: bool = False, **kwargs):
        super().__init__(clip, classnames, **kwargs)
        self.exact_self = exact_self

    def inference(self, image_features):
        return self.clip.logit_scale * image_features @ self.text_features().T

    def predict(self, views: torch.Tensor) -> dict:
        """views: features `[V, D]` -> weighted logits `[C]`, first loss, kept views, weights `[V]`."""
        images = views.float()
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(self.optim_state)
        with torch.no_grad():
            clip_features = images
        selected_idx, first_loss = None, math.nan
        for j in range(self.steps):                          # test_time_tuning
            output = self.inference(images)
            if selected_idx is not None:
                output = output[selected_idx]
            else:
                batch_entropy = -(output.softmax(1) * output.log_softmax(1)).sum(1)
                top = int(batch_entropy.size()[0] * self.selection_p)
                selected_idx = torch.argsort(batch_entropy, descending=False)[:top]
                output = output[selected_idx]
            loss = _entropy_avg(output)
            first_loss = float(loss.detach()) if j == 0 else first_loss
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            tuned_outputs = self.inference(images)
            sim_matrix_images = torch.bmm(clip_features.unsqueeze(0), clip_features.unsqueeze(0).permute(0, 2, 1))
            if self.exact_self:
                sim_matrix_images[0].fill_diagonal_(1.0)
            score = _get_top_sim(sim_matrix_images)
            weight = torch.nn.functional.softmax(score / 0.01, dim=-1)
            tta_output = torch.bmm(weight.unsqueeze(-1).transpose(1, 2), tuned_outputs.unsqueeze(0)).squeeze(1)
        return {"logits": tta_output[0], "loss": first_loss, "kept": selected_idx.tolist(), "weights": weight[0]}


__all__ = ["DPEReference", "BoostAdapterReference", "TPSReference", "RTPTReference"]
