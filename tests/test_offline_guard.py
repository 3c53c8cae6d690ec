import socket

import pytest

from conftest import HubDownloadInTest, NetworkUsedInTest


def test_hub_lookup_fails_loudly():
    with pytest.raises(NetworkUsedInTest):
        socket.getaddrinfo("huggingface.co", 443)


def test_hub_download_fails_loudly():
    import huggingface_hub

    with pytest.raises(HubDownloadInTest):
        huggingface_hub.hf_hub_download("timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors")


def test_open_clip_hub_tag_fails_fast_with_instructions():
    from clipbench.errors import ClipbenchError
    from clipbench.models import weights_fingerprint

    with pytest.raises(ClipbenchError, match="--set model.pretrained="):
        weights_fingerprint("ViT-B-32", "openai")
