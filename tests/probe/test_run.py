"""`probe_features` arguments checked before any work."""

from __future__ import annotations

import pytest

from plankdiff.probe.run import probe_features


def test_an_unknown_protocol_is_refused_not_run_as_knn():
    # before #18: any protocol other than "linear" ran kNN and was saved under the given name
    with pytest.raises(ValueError, match="protocol must be one of linear, knn, not 'svm'"):
        probe_features(None, None, protocol="svm")
