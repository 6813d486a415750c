"""What a person reads in the terminal: library warnings, log records and weight-loading bars go to the run's
library log, sftflow's own lines stay."""

from __future__ import annotations

import logging
import warnings


def test_library_noise_goes_to_the_log_file_and_everything_is_restored(tmp_path, capfd):
    import transformers
    from transformers.utils import logging as hf_logging

    from flows.console import library_output_to

    hf_logging.enable_progress_bar()
    before = logging.getLogger("transformers").handlers[:]
    log = tmp_path / "run" / "library.log"
    with library_output_to(log):
        warnings.warn("`old_thing` is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger("transformers.modeling_utils").warning("some weights were not initialized")
        assert not hf_logging.is_progress_bar_enabled()
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
        print("sftflow: 3 rows in")  # sftflow's own line
    out, err = capfd.readouterr()
    assert out == "sftflow: 3 rows in\n"
    assert "deprecated" not in err and "Loading weights" not in err and "not initialized" not in err
    text = log.read_text(encoding="utf-8")
    assert "FutureWarning: `old_thing` is deprecated" in text and "some weights were not initialized" in text
    assert logging.getLogger("transformers").handlers == before
    assert transformers is not None and hf_logging.is_progress_bar_enabled()
