"""Attention maps of students and teachers: hand-made weights, and the shapes real models give."""

import warnings

import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_deit import DistilledDeiTForImageClassification
from hf_deit.teacher import Teacher
from hf_deit.attention_maps import (
    activation_attention_map,
    attention_rollout,
    capture_attention,
    classifier_layer,
    rollout_map,
    token_attention_map,
)


def test_token_attention_map_averages_heads_and_layers_and_drops_prefix_tokens():
    # 1 image, 2 heads, 2 prefix tokens + a 2x2 grid: 6 keys. Rows 0 and 1 are the cls and dist queries.
    weights = torch.zeros(1, 2, 6, 6)
    weights[0, 0, 0] = torch.tensor([0.2, 0.0, 0.8, 0.0, 0.0, 0.0])  # head 0: cls looks at patch (0, 0)
    weights[0, 1, 0] = torch.tensor([0.2, 0.0, 0.0, 0.0, 0.0, 0.8])  # head 1: cls looks at patch (1, 1)
    weights[0, :, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # dist looks at patch (0, 1)
    cls_map = token_attention_map([weights], (2, 2), token_index=0)
    assert torch.allclose(cls_map, torch.tensor([[[0.4, 0.0], [0.0, 0.4]]]))
    dist_map = token_attention_map([weights], (2, 2), token_index=1, num_prefix_tokens=2)
    assert torch.allclose(dist_map, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))
    # Two layers: the mean of their maps.
    two = token_attention_map([weights, weights.flip(-1)], (2, 2), token_index=1)
    assert torch.allclose(two, torch.tensor([[[0.5, 0.5], [0.0, 0.0]]]))  # flipped keys: patch (0, 0)
    with pytest.raises(ValueError, match="prefix"):
        token_attention_map([weights], (2, 2), num_prefix_tokens=1)


def test_attention_rollout_of_identity_attention_is_identity_and_rows_sum_to_one():
    identity = torch.eye(5).expand(2, 3, 5, 5)
    assert torch.allclose(attention_rollout([identity, identity]), torch.eye(5).expand(2, 5, 5))
    random = torch.rand(2, 3, 6, 6).softmax(-1)
    rollout = attention_rollout([random, random, random])
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 6), atol=1e-5)
    # One layer by hand: (I + mean_heads(A)) / 2, rows already summing to 1.
    assert torch.allclose(attention_rollout([random]), (torch.eye(6) + random.mean(1)) / 2, atol=1e-6)
    assert rollout_map([random, random], (2, 2)).shape == (2, 2, 2)


def test_activation_attention_is_the_channel_mean_of_squares():
    features = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2 channels, 1, 2)
    assert torch.equal(activation_attention_map(features), torch.tensor([[[5.0, 2.0]]]))
    with pytest.raises(ValueError, match="channels"):
        activation_attention_map(torch.zeros(2, 3, 4))


def _resnet():
    config = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=5,
                          downsample_in_first_stage=False)  # fmt: skip
    return ResNetForImageClassification(config).eval()


def test_cnn_teacher_map_is_its_last_stage_grid_and_features_are_pre_logits():
    torch.manual_seed(0)
    teacher = _resnet()
    pixel_values = torch.randn(3, 3, 32, 32)
    out = Teacher(teacher)(pixel_values, attention_map=True, features=True)
    # 32 px -> stem /4 -> 8x8 -> stage 2 /2 -> 4x4, 32 channels.
    assert out.logits.shape == (3, 5) and out.attention_map.shape == (3, 4, 4) and out.features.shape == (3, 32)
    with torch.no_grad():
        last_stage = teacher(pixel_values, output_hidden_states=True).hidden_states[-1]
        assert torch.allclose(out.attention_map, last_stage.pow(2).mean(1))
        assert torch.allclose(teacher.classifier[1](out.features), out.logits, atol=1e-6)
        assert torch.allclose(teacher(pixel_values).logits, out.logits)


def test_a_cnn_teacher_whose_last_stage_is_1x1_is_flagged():
    teacher = _resnet()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 32 px: a 4x4 map, no warning
        Teacher(teacher)(torch.randn(1, 3, 32, 32), attention_map=True)
    with pytest.warns(UserWarning, match="last stage is 1x1 at \\(8, 8\\) px"):
        out = Teacher(teacher)(torch.randn(1, 3, 8, 8), attention_map=True)
    assert out.attention_map.shape == (1, 1, 1)


def test_convnext_teacher_map_shape():
    config = ConvNextConfig(num_stages=3, hidden_sizes=[8, 16, 32], depths=[1, 1, 1], patch_size=2, num_labels=5)
    teacher = ConvNextForImageClassification(config).eval()
    out = Teacher(teacher)(torch.randn(2, 3, 32, 32), attention_map=True)
    assert out.attention_map.shape == (2, 4, 4)  # 32 / 2 (stem), then stages 2 and 3 halve it


def test_vit_teacher_map_is_its_cls_attention_over_patches():
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=5)  # fmt: skip
    teacher = ViTForImageClassification(config).eval()
    teacher.set_attn_implementation("sdpa")
    wrapped = Teacher.load(teacher, attention_maps=True)  # transformers returns weights from eager attention only
    pixel_values = torch.randn(2, 3, 32, 32)
    out = wrapped(pixel_values, attention_map=True, features=True)
    assert out.attention_map.shape == (2, 4, 4) and out.features.shape == (2, 32)
    with torch.no_grad():
        last = teacher(pixel_values, output_attentions=True).attentions[-1]
    assert torch.allclose(out.attention_map.flatten(1), last[:, :, 0, 1:].mean(1))
    assert (out.attention_map.sum((1, 2)) < 1).all()  # the rest went to the cls token itself
    assert classifier_layer(teacher) is teacher.classifier


def test_our_model_as_teacher_computes_weights_for_the_requested_layer_only(tiny_config):
    torch.manual_seed(0)
    teacher = DistilledDeiTForImageClassification(tiny_config).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    out = Teacher(teacher)(pixel_values, attention_map=True, features=True, layers=(0,))
    with torch.no_grad():
        first = teacher(pixel_values, output_attentions=True).attentions[0]
    assert out.attention_map.shape == (2, 4, 4)
    assert torch.allclose(out.attention_map.flatten(1), first[:, :, 0, 2:].mean(1), atol=1e-6)
    # Pre-logits features: the dist token's final state (input of the last Linear registered).
    assert torch.allclose(teacher.distillation_classifier(out.features), teacher(pixel_values).distillation_logits,
                          atol=1e-6)  # fmt: skip


def test_captured_attention_is_the_chosen_blocks_weights_and_the_other_blocks_keep_their_backend(tiny_config):
    torch.manual_seed(0)
    student = DistilledDeiTForImageClassification(tiny_config).eval()
    student.set_attn_implementation("sdpa")
    pixel_values = torch.randn(2, 3, 32, 32)
    gave_weights = []
    for block in student.deit.layers:
        block.attention.register_forward_hook(lambda _module, _args, output: gave_weights.append(output[1] is not None))
    with torch.no_grad():
        every = student(pixel_values, output_attentions=True).attentions
        gave_weights.clear()
        with capture_attention(student, [-1]) as only_last:
            logits = student(pixel_values).logits
        assert gave_weights == [False, True]
        with capture_attention(student, [-1, 0, 1]) as both:
            student(pixel_values)
    assert len(only_last) == 1 and len(both) == 2  # in block order, each block once
    torch.testing.assert_close(only_last[0], every[-1])
    torch.testing.assert_close(both[0], every[0])
    torch.testing.assert_close(logits, student(pixel_values).logits)
    assert torch.allclose(token_attention_map(only_last, (4, 4), 1), token_attention_map(every[-1:], (4, 4), 1),
                          atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="No block 2 to read attention from: the model has 2 blocks"):
        with capture_attention(student, [2]):
            pass


@pytest.mark.parametrize("checkpointing", [False, True])
def test_captured_attention_carries_gradients_also_under_gradient_checkpointing(tiny_config, checkpointing):
    """Attention distillation backpropagates through the captured weights; under gradient checkpointing the captured
    block is not recomputed (before transformers 5.23 the recomputation ran without the hooks) and the others are."""
    torch.manual_seed(0)
    student = DistilledDeiTForImageClassification(tiny_config).train()
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def gradients():
        student.zero_grad()
        with capture_attention(student, [-1]) as attentions:
            logits = student(pixel_values).logits
        (attentions[0][:, :, 1].sum() + logits.sum()).backward()
        return {name: parameter.grad.clone() for name, parameter in student.named_parameters()}

    expected = gradients()
    assert expected["deit.layers.1.attention.qkv.weight"].abs().sum() > 0
    if checkpointing:
        student.gradient_checkpointing_enable()
        runs = {0: [], -1: []}
        for index, calls in runs.items():
            student.deit.layers[index].attention.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        checkpointed = gradients()
        assert (len(runs[0]), len(runs[-1])) == (2, 1)  # block 0 recomputed in the backward pass, the captured one not
        assert student.deit.layers[-1].gradient_checkpointing  # checkpointed again once read
        for name in expected:
            torch.testing.assert_close(checkpointed[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_teacher_without_maps_is_refused_with_a_clear_message():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(12, 5)

        def forward(self, pixel_values, **kwargs):
            return self.fc(pixel_values.flatten(1)[:, :12])

    with pytest.raises(ValueError, match="neither attention weights nor CNN"):
        Teacher(Plain())(torch.randn(2, 3, 2, 2), attention_map=True)
