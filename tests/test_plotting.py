"""Plot titles name the data and the model: ``cifar10 · default (cb438070)``, never a bare file name or hash."""
from zeroshot.backbone import DEFAULT_MODEL_DIR
from zeroshot.plotting import dataset_label, model_label, run_title

FINGERPRINT = "cb438070808b1159"


def test_run_title_names_the_card_and_the_model():
    assert run_title("cifar10", "/data/cifar10/test.npz", f"local-dir:{DEFAULT_MODEL_DIR}", FINGERPRINT) == \
        "cifar10 · default (cb438070)"


def test_run_title_without_a_card_names_the_dataset_folder_too():
    assert run_title(None, "/data/mnist_rgb/test.npz", "ViT-B-32/laion2b_s34b_b79k", FINGERPRINT) == \
        "mnist_rgb/test.npz · ViT-B-32/laion2b_s34b_b79k (cb438070)"
    assert dataset_label("/data/tinyimagenet/val/") == "tinyimagenet/val"


def test_model_label_shortens_model_folders_only():
    assert model_label(f"local-dir:{DEFAULT_MODEL_DIR}") == "default"
    assert model_label("local-dir:/models/student-small") == "student-small"
    assert model_label("hf-hub:org/model") == "hf-hub:org/model"
