"""``transform`` of the estimators that add affinities to records (``AffinityEstimator``,
``FeatureAffinity``): the affinity of each record's image on the stride-8 grid, batch by
batch, in memory or in a store, split over the ranks of a data-parallel fit."""

import joblib
import numpy as np
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._distributed import share_work
from ._store import ArrayStore, image_key, model_key
from .records import check_records

__all__ = ["AffinityTransformerMixin"]


def _inference(batches):
    """``batches`` (a generator of torch work) advanced under ``torch.inference_mode``, so
    that the consumer's own code between batches runs outside it."""
    import torch

    while True:
        with torch.inference_mode():
            try:
                item = next(batches)
            except StopIteration:
                return
        yield item



class AffinityTransformerMixin(TransformerMixin):
    """``transform`` for the estimators that add affinities to records.

    A subclass defines ``_affinity_features(records)``, yielding
    ``(indices, features)`` batch by batch, whose
    :func:`~sklearn_psa.nn.affinity_head.pairwise_affinity` is the affinity,
    and sets ``offsets_`` in ``fit``; it has the ``radius`` and ``verbose`` parameters.

    Within :func:`~sklearn_psa._distributed.split_work` (a data-parallel fit),
    each rank computes the affinities of its share of the records and every
    rank gets all (gathered, or read from ``store`` after a barrier).
    """

    def predict_affinity(self, X):
        """The affinity ``(K, h, w)`` of each record's whole image on the stride-8 grid.

        Parameters
        ----------
        X : Records

        Returns
        -------
        affinities : list of ndarray of shape (K, ceil(H/8), ceil(W/8)), float32
            ``affinities[i][k, y, x]`` is the affinity between cell ``(y, x)``
            and ``(y + dy_k, x + dx_k)`` (``offsets_[k]``); 0 where the
            neighbour is outside the grid.
        """
        check_is_fitted(self)
        records = check_records(X, name="X")
        return share_work(lambda part: self._affinity_list(records[part]), range(len(records)))

    def _affinity_list(self, records):
        """The affinities of ``records``, in their order."""
        out = [None] * len(records)
        for i, aff in self._iter_affinities(records):
            out[i] = aff
        return out

    def _iter_affinities(self, records, done=0):
        """Yield ``(index, affinity)`` per record as computed, with the progress bar
        (``done`` records computed earlier count in it)."""
        import torch

        from ._training import progress
        from .nn.affinity_head import pairwise_affinity

        bar = progress(verbose=self.verbose, desc=f"{type(self).__name__} affinities",
                       total=len(records) + done, initial=done)
        with bar:
            for idx, feats in _inference(self._affinity_features(records)):
                with torch.inference_mode():
                    aff = pairwise_affinity(feats.float(), self.offsets_).cpu().numpy()
                for j, i in enumerate(idx):
                    yield i, np.ascontiguousarray(aff[j], dtype=np.float32)
                bar.update(len(idx))

    def transform(self, X):
        """Add each image's affinity to its record.

        Parameters
        ----------
        X : Records
            Records with CAMs (from :class:`~sklearn_psa.CAMClassifier`).

        Returns
        -------
        records : Records
            The same records with ``affinity`` ``(K, ceil(H/8), ceil(W/8))`` and
            ``radius`` set, ready for :class:`~sklearn_psa.RandomWalkRefiner`;
            memory-mapped from ``store`` when it is set.
        """
        if getattr(self, "store", None) is None:
            affinities = self.predict_affinity(X)  # checks X first
            return X.with_affinity(affinities, self.radius)
        check_is_fitted(self)
        records = check_records(X, name="X")
        return records.with_affinity(self._stored_affinities(records), self.radius)

    def _stored_affinities(self, records):
        """Memory-mapped affinities from ``store``, computing only those not there."""
        store = ArrayStore(self.store)
        model = model_key(self, self._store_fitted())
        keys = [joblib.hash((model, image_key(r.image), tuple(r.shape))) for r in records.records]
        def compute(todo):  # the records not there (in a data-parallel fit: this rank's share)
            for j, aff in self._iter_affinities(records[todo], done=len(records) - len(todo)):
                store.save("affinity", keys[todo[j]], aff)

        store.fill("affinity", keys, compute)
        return [store.reference("affinity", key) for key in keys]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags
