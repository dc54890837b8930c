"""gemb: natively multimodal embedding models in JAX/Flax NNX."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "requirements.txt")) as f:
  requirements = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]

setup(
    name="gemb",
    version="0.1.0",
    description="Train natively multimodal embedding models (text, image, audio, video) in JAX.",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gemb", "gemb.*"]),
    python_requires=">=3.11",
    install_requires=requirements,
    # gemb-X runs the module as `python -m` does (gemb/cli.py); the flags are the same.
    entry_points={"console_scripts": [
        "gemb-train = gemb.cli:train",
        "gemb-eval = gemb.cli:evaluate",
        "gemb-export = gemb.cli:export",
        "gemb-embed = gemb.cli:embed",
        "gemb-serve = gemb.cli:serve",
        "gemb-bench = gemb.cli:bench",
        "gemb-pretrained = gemb.pretrained.__main__:main",
    ]},
    extras_require={
        # ctranslate2 / faster-whisper: the published Whisper implementations that the tests
        # compare gemb's Whisper encoder and features with.
        # openai: the real client that tests gemb.serve's POST /v1/embeddings.
        # sentence-transformers (+ the CPU torch build, pinned: `pip install torch==2.13.0`
        # takes the local CPU wheel) loads gemb.export --format=sentence-transformers output
        # in tests/test_export_sentence_transformers.py, the round trip's reference.
        # pytest-xdist: the README's test command runs the suite in two worker processes.
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "scikit-video==1.1.11",
                 "ctranslate2==4.8.5", "faster-whisper==1.2.1", "openai==3.51.0", "torch==2.13.0",
                 "sentence-transformers==6.3.0", "transformers==5.25.0"],
        # The published implementations that tests/make_backbone_references.py runs to write
        # the pretrained backbones' parity fixtures (tests/fixtures/backbones/); CI does not
        # install it: the tests read the committed fixtures.
        "reference": ["torch==2.13.0", "sentence-transformers==6.3.0", "transformers==5.25.0"],
        # TensorFlow SavedModel export of serving bundles (python -m gemb.export).
        "serving": ["tensorflow-cpu==2.21.0"],
        # MTEB evaluation of serving bundles (gemb.integrations.mteb). mteb needs torch for its
        # DataLoaders: the CPU build (pinned, ~750 MB installed); the others as resolved with it.
        "mteb": ["mteb==2.26.24", "torch==2.13.0", "datasets==5.2.0",
                 "sentence-transformers==6.3.0", "transformers==5.25.0"],
        "tpu": ["jax[tpu]==0.10.2"],  # libtpu for TPU VMs (launch/tpu_vm.py installs it)
        "gcp": ["gcsfs==2026.10.1"],  # gs:// workdirs for the files gemb writes itself
    },
)
