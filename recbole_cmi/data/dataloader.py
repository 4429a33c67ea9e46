"""Training data loader with train-only batch hooks.

A hook is a callable ``hook(interaction) -> interaction`` that adds keys to the training batch
(contrastive views, negative ids). Hooks run after RecBole's collation and negative sampling,
on the training loader only, never at evaluation. A model declares its hooks through a
``train_batch_hooks(config, dataset)`` classmethod; models without one get none. The caller passes that
builder to :func:`data_preparation` (``recbole_cmi.utils.train_batch_hooks`` finds it by model name), so the data
layer never looks a model up. A hook
that needs the live model (interest-aware negatives) defines ``bind_model(model)``; one whose attribute
``wants_rows`` is true is called as ``hook(interaction, rows)``, ``rows`` the training dataset's rows of the
batch (the rows the histories come from; RecBole's negative sampling may tile the batch). A hook
that draws from its own ``torch.Generator`` (attribute ``generator``) has that generator's state
saved in checkpoints with the loader's shuffling generator (``get_rng_state``/``set_rng_state``),
so a resumed run draws the same batches and views as an uninterrupted one.

``train_sampling`` chooses the training rows of an epoch for sequential models. ``prefixes``
(RecBole's): every prefix of every history, target = the next item. ``per_user`` (the CMI authors'
sampler, docs/cmi.md §3.1): an epoch visits each user once; a row is the user's history cut at a
random point, and its target a random later item of that user (the next item or any after it, up
to the last training item). The rows come from RecBole's prefix rows (the history of a random
prefix, the target of a random prefix at or after it), so views, negatives and hooks work as
before; an epoch has one row per user, so it is far shorter than a ``prefixes`` epoch.
"""

from __future__ import annotations

import torch
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import TrainDataLoader
from recbole.utils import ModelType

from recbole_cmi import options
from recbole_cmi.data.protocol import multi_target_preparation, protocol_name
from recbole_cmi.errors import ConfigValueError, DatasetError

TRAIN_SAMPLINGS = ("prefixes", "per_user")


class HookedTrainDataLoader(TrainDataLoader):
    def __init__(self, config, dataset, sampler, shuffle=False, hooks=()):
        self.batch_hooks = list(hooks)
        self.per_user = options.choice(config, "train_sampling", TRAIN_SAMPLINGS, default="prefixes") == "per_user"
        if self.per_user:
            if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
                raise ConfigValueError("train_sampling: per_user is for sequential models (it cuts histories)")
            self.user_rows_order, *self.user_rows = rows_by_user(dataset)
            self.sampling_generator = torch.Generator().manual_seed(config["seed"])
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    # RecBole's loaders iterate over range(sample_size); per_user iterates over users instead.
    @property
    def sample_size(self):
        return len(self.user_rows[0]) if self.per_user else self._sample_size

    @sample_size.setter
    def sample_size(self, value):
        self._sample_size = value

    def collate_fn(self, index):
        if self.per_user:
            interaction, rows = self._per_user_batch(index)
        else:
            interaction, rows = super().collate_fn(index), torch.as_tensor(index, dtype=torch.long)
        for hook in self.batch_hooks:
            interaction = hook(interaction, rows) if getattr(hook, "wants_rows", False) else hook(interaction)
        return interaction

    def _per_user_batch(self, users):
        """``TrainDataLoader.collate_fn`` on per_user rows: the history of a random prefix of each user and
        the target of a random prefix at or after it, set before RecBole's transform and negatives see it.
        Returns the batch and the dataset rows its histories come from."""
        starts, counts = self.user_rows
        users = torch.as_tensor(users, dtype=torch.long)
        start, count = starts[users], counts[users]
        uniform = torch.rand(2, len(users), generator=self.sampling_generator, dtype=torch.float64)
        cut = (uniform[0] * count).long()
        later = cut + (uniform[1] * (count - cut)).long()
        rows = self.user_rows_order[start + cut]
        data = self._dataset[rows.numpy()]
        item = self._dataset.iid_field
        data.interaction[item] = self._dataset.inter_feat[item][self.user_rows_order[start + later]]
        return self._neg_sampling(self.transform(self._dataset, data)), rows

    def bind_model(self, model):
        for hook in self.batch_hooks:
            if hasattr(hook, "bind_model"):
                hook.bind_model(model)

    def get_rng_state(self) -> dict:
        hooks = [
            hook.generator.get_state() if isinstance(getattr(hook, "generator", None), torch.Generator) else None
            for hook in self.batch_hooks
        ]
        state = {"loader": self.generator.get_state(), "hooks": hooks}
        if self.per_user:
            state["per_user"] = self.sampling_generator.get_state()
        return state

    def set_rng_state(self, state: dict) -> None:
        self.generator.set_state(state["loader"])
        if self.per_user and state.get("per_user") is not None:
            self.sampling_generator.set_state(state["per_user"])
        for hook, hook_state in zip(self.batch_hooks, state.get("hooks") or []):
            if hook_state is not None and isinstance(getattr(hook, "generator", None), torch.Generator):
                hook.generator.set_state(hook_state)


def rows_by_user(dataset):
    """``(order, starts, counts)``: the training rows grouped by user (a user's rows keep their order,
    shortest prefix first), and where each user's group starts in ``order`` and how long it is."""
    users = dataset.inter_feat[dataset.uid_field]
    order = torch.argsort(users, stable=True)
    _, counts = torch.unique_consecutive(users[order], return_counts=True)
    return order, torch.cumsum(counts, 0) - counts, counts


def data_preparation(config, dataset, build_hooks):
    """RecBole's ``data_preparation`` with the model's train-only hooks on the training loader.

    ``build_hooks``: the model's ``train_batch_hooks(config, train_dataset)`` classmethod, or None for a model
    without hooks (``recbole_cmi.utils.train_batch_hooks(model_name)`` gives either).

    With ``eval_protocol: multi_target`` the splits and the validation/test loaders are those of
    :mod:`recbole_cmi.data.protocol` (the training loader is RecBole's, on the training period).

    An empty split, or a ``topk`` cut-off above the number of items, is a :class:`DatasetError`
    (RecBole would fail inside torch, or silently train without evaluating).
    """
    if protocol_name(config) == "multi_target":  # the paper's protocol: recbole_cmi.data.protocol
        train_data, valid_data, test_data = multi_target_preparation(config, dataset)
    else:
        try:
            train_data, valid_data, test_data = recbole_data_preparation(config, dataset)
        except ValueError as err:
            if "num_samples should be a positive integer" not in str(err):
                raise
            raise DatasetError(_empty_split_message(config, "training")) from err
    for name, loader in (("training", train_data), ("valid", valid_data), ("test", test_data)):
        if name == "valid" and (config["eval_step"] or 0) <= 0:
            continue
        if loader is None or len(loader._dataset) == 0:
            raise DatasetError(_empty_split_message(config, name))
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    n_items = dataset.item_num - 1  # id 0 is padding
    if any(isinstance(k, int) and k > n_items for k in topk):
        raise DatasetError(
            f"topk={config['topk']}: dataset '{config['dataset']}' has only {n_items} items after filtering; "
            f"use cut-offs <= {n_items}"
        )
    hooks = build_hooks(config, train_data._dataset) if build_hooks else []
    train_data = HookedTrainDataLoader(
        config, train_data._dataset, train_data._sampler, shuffle=config["shuffle"], hooks=hooks
    )
    return train_data, valid_data, test_data


def _empty_split_message(config, name) -> str:
    return (
        f"the {name} split of dataset '{config['dataset']}' is empty: users have too few interactions "
        f"for eval_args split={config['eval_args']['split']} (a sequential leave-one-out split needs "
        f"2 per user for training, 3 for test, 4 for valid; user_inter_num_interval="
        f"{config['user_inter_num_interval']})"
    )
