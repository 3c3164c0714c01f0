"""Janus-Pro on transformers' JanusForConditionalGeneration, proven on `tiny-janus` (the same classes, a tiny random
config, CPU, no weights): the answer loss equals transformers' own forward, delta reaches the LLM and C, regen and t2i
shapes and determinism, LoRA-only gradients, the registry's errors, the 7B architecture on the meta device, prompt
ids equal to JanusProcessor's, strict loading onto a given device, and no deprecation warnings.
Run: python -m pytest -q tests/test_janus.py"""

import pytest
import torch
import torch.nn.functional as F

import backbones
import data
import janus
import memory
import model
import tiny_janus
from perturber import Perturber

PROMPTS = ['how many objects are there ?', 'is there a red circle left of the blue square ?']  # unequal lengths


@pytest.fixture(scope='module')
def umm():
    torch.manual_seed(0)
    return backbones.load_backbone('tiny-janus').eval()


@pytest.fixture(scope='module')
def batch():
    ds = data.ShapesVQA('val', 4)
    b = data.collate([ds[i] for i in range(4)])
    b['images'] = F.interpolate(b['images'], size=32, mode='bilinear').clamp(0, 1)  # tiny-janus reads 32 px
    return b


def test_contract_shapes(umm, batch):
    x = batch['images']
    z = umm.encode(x)
    assert z.shape == (4, 16 * 16, umm.hidden_size)                 # SigLIP patches 2 px on 32 px
    assert umm.encode(torch.rand(4, 3, 36, 36)).shape == z.shape     # other sizes are resized
    loss = umm.understand_loss(z, batch['questions'], batch['answers'])
    assert loss.shape == (4,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    answers = umm.answer(z, batch['questions'])
    assert len(answers) == 4 and all(isinstance(s, str) for s in answers)
    assert len(umm.caption(x[:2], max_new_tokens=3)) == 2
    assert umm.generate(PROMPTS).shape == (2, 3, 32, 32)


def test_understand_loss_equals_transformers_forward(umm, batch):
    """delta = 0: the per-sample answer CE (batched, left-padded) is what JanusForConditionalGeneration's own forward
    computes from input_ids + pixel_values with the labels masked to the answer."""
    x, q, a = batch['images'], batch['questions'], batch['answers']
    with torch.no_grad():
        per_sample = umm.understand_loss(umm.encode(x), q, a)
        for i in range(4):
            prompt = umm._prompt(q[i])
            assert prompt.count(umm.janus.config.image_token_id) == 256 and prompt[0] == umm.tok.bos_token_id
            target = umm.tok(' ' + a[i], add_special_tokens=False)['input_ids'] + [umm.tok.eos_token_id]
            ids = torch.tensor([prompt + target])
            labels = torch.full_like(ids, -100)
            labels[0, len(prompt):] = torch.tensor(target)
            ref = umm.janus(input_ids=ids, pixel_values=x[i:i + 1] * 2 - 1, labels=labels).loss  # Janus: mean=std=0.5
            torch.testing.assert_close(per_sample[i], ref, rtol=0, atol=1e-5)


def test_delta_reaches_the_llm_and_the_perturber(umm, batch):
    x, q, a = batch['images'], batch['questions'], batch['answers']
    z = umm.encode(x).detach()
    C = Perturber(umm.hidden_size, width=16, eps_max=1.0)
    delta = C(z.float())
    adv = umm.understand_loss(z.float() + delta, q, a)
    assert (adv - umm.understand_loss(z, q, a)).abs().min() > 1e-6
    adv.sum().backward()
    assert C.theta.grad != 0 and C.mlp[0].weight.grad.abs().sum() > 0
    # the generation branch: delta on the post-LM image states; the straight-through decode carries C's gradient
    C.zero_grad()
    x_tilde, delta = umm.decode(x, z, q, perturb=C)
    assert delta.shape == (4, 256, umm.hidden_size) and delta.dtype == torch.float32
    x_tilde.mean().backward()
    assert C.theta.grad != 0 and C.mlp[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # a strong delta changes the picked codes, so the candidate
        strong = Perturber(umm.hidden_size, width=16, eps_max=50.0)
        assert not torch.equal(umm.decode(x, z, q, perturb=strong)[0], umm.decode(x, z, q)[0])


def test_regen_is_deterministic_and_is_the_vq_decode_of_the_argmax_codes(umm, batch):
    x, q = batch['images'], batch['questions']
    with torch.no_grad():
        x1, delta = umm.decode(x, None, q)
        x2, _ = umm.decode(x, None, q)
        codes = umm.image_codes(x)
        picked = umm.gen_logits(umm.gen_states(codes, q)).argmax(-1)
        ref = ((umm.janus.decode_image_tokens(picked).permute(0, 3, 1, 2) + 1) / 2).clamp(0, 1)  # transformers'
    assert delta is None and codes.shape == picked.shape == (4, 16 * 16)  # the code grid matches x's
    assert x1.shape == x.shape and torch.equal(x1, x2) and 0 <= x1.min() and x1.max() <= 1
    torch.testing.assert_close(x1, ref, rtol=0, atol=1e-4)


def test_t2i_makes_the_grid_and_its_kv_cache_agrees_with_teacher_forcing(umm):
    C = Perturber(umm.hidden_size, width=16)
    with torch.no_grad():
        x_tilde, delta = umm.decode(None, None, PROMPTS, perturb=C, mode='t2i')
        assert x_tilde.shape == (2, 3, 32, 32) and delta.shape == (2, 255, umm.hidden_size)  # one per fed-back code
        # guidance 1 and argmax: one teacher-forced pass over t2i's own codes re-predicts every one of them, so the
        # cache, the positions under left padding and the fed-back embeddings agree between the two paths
        codes, _ = umm.t2i_codes(PROMPTS, temperature=0, cfg_scale=1.0)
        assert codes.shape == (2, 256)
        assert torch.equal(umm.gen_logits(umm.gen_states(codes, PROMPTS)).argmax(-1), codes)
    with pytest.raises(ValueError, match='regen'):  # not differentiable: refused where a gradient is expected
        umm.decode(None, None, PROMPTS, perturb=C, mode='t2i')


def test_bf16_autocast_keeps_losses_and_delta_float32(umm, batch):
    x, q, a = batch['images'], batch['questions'], batch['answers']
    C = Perturber(umm.hidden_size, width=16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        z = umm.encode(x)
        loss = umm.understand_loss(z.float() + C(z.float()), q, a)
        x_tilde, delta = umm.decode(x, z, q, perturb=C)
    assert loss.dtype == delta.dtype == torch.float32 and torch.isfinite(loss).all() and x_tilde.shape == x.shape


def test_lora_only_is_trainable_and_round_trips(tmp_path, batch):
    torch.manual_seed(0)
    a = backbones.load_backbone('tiny-janus').add_lora(r=4, alpha=8, dropout=0.0)
    trainable = {n for n, p in a.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 * 2 and all('language_model' in n and 'lora_' in n for n in trainable)  # layers
    assert {id(p) for p in a.understanding_parameters()} == {id(p) for n, p in a.named_parameters() if 'lora_' in n}
    for p in a.understanding_parameters():  # lora_B starts at zero; give every adapter a non-zero value
        torch.nn.init.normal_(p, std=0.05)
    z = a.encode(batch['images'])
    loss = a.understand_loss(z, batch['questions'], batch['answers'])
    loss.mean().backward()
    for n, p in a.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) if 'lora_' in n else p.grad is None, n
    a.save_trainable(tmp_path)
    torch.manual_seed(0)
    b = backbones.load_backbone('tiny-janus').add_lora(r=4, alpha=8, dropout=0.0)
    b.load_trainable(tmp_path)
    torch.testing.assert_close(b.understand_loss(z.detach(), batch['questions'], batch['answers']), loss.detach())


def test_bad_backbone_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match='janus-pro-7b.*tiny-janus'):
        backbones.load_backbone('tiny-janis')


def test_janus_without_weights_fails_with_one_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))  # an empty cache: nothing is downloaded
    for name in ('janus-pro-7b', 'deepseek-community/Janus-Pro-1B', str(tmp_path)):  # registry, hub id, empty dir
        with pytest.raises(model.MissingWeights, match='HF_HOME') as e:
            backbones.load_backbone(name)
        assert 'Janus-Pro' in str(e.value) and 'tiny-janus' in str(e.value)


def test_janus_pro_7b_on_the_meta_device():
    umm = backbones.load_backbone('janus-pro-7b', meta=True)
    assert (umm.hidden_size, umm.image_size, umm.grid) == (4096, 384, 24)
    assert umm.janus.lm_head.weight.shape == (102400, 4096) and umm.janus.lm_head.weight.is_meta
    assert umm.janus.model.generation_head.vision_head.weight.shape == (16384, 4096)  # VQ-16 codebook size
    assert umm.janus.model.aligner.fc1.weight.shape == (4096, 1024)                    # SigLIP-L width -> H
    n = memory.count_parameters('janus-pro-7b', perturber_width=256)
    assert 7.3e9 < n['base'] < 7.5e9                        # the released checkpoint: 14.8 GB in bf16
    assert n['lora'] == 30 * 4 * 16 * (4096 + 4096)         # 30 layers x q, k, v, o x r (in + out)
    assert n['perturber'] == 2 * 4096 * 256 + 256 ** 2 + 2 * 256 + 4096 + 1 and n['trainable_share'] < 0.01


@pytest.mark.filterwarnings('ignore:`is_gradient_checkpointing`:FutureWarning')  # plain peft: see model.peft_lora
def test_the_adapter_loads_with_plain_peft_and_the_merged_dir_with_from_pretrained(tmp_path, batch):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration
    torch.manual_seed(0)
    umm = tiny_janus.build_tiny_janus()
    umm.janus.save_pretrained(tmp_path / 'base')                 # the frozen base, as a hub dir would hold it
    umm.add_lora(r=4, alpha=8, dropout=0.0)
    for n, p in umm.lm.named_parameters():                      # a trained adapter: lora_B no longer zero
        if 'lora_B' in n:
            p.data.normal_(0, 0.5)
    umm.eval()
    z = umm.encode(batch['images'])
    ours = umm.understand_loss(z, batch['questions'], batch['answers'])
    umm.save_trainable(tmp_path / 'adapter')

    plain = PeftModel.from_pretrained(JanusForConditionalGeneration.from_pretrained(tmp_path / 'base'),
                                      tmp_path / 'adapter').eval()
    wrapped = [n for n, _ in plain.named_modules() if n.endswith('lora_A')]
    assert wrapped and all('language_model.layers' in n for n in wrapped)  # SigLIP's q_proj stays untouched
    other = janus.JanusUMM(plain.get_base_model(), umm.tok, caption_prompt='<caption>')
    torch.testing.assert_close(other.understand_loss(z, batch['questions'], batch['answers']), ours)
    with plain.disable_adapter():  # and the adapter is what makes the difference
        assert (other.understand_loss(z, batch['questions'], batch['answers']) - ours).abs().max() > 1e-3

    umm.export_merged(tmp_path / 'merged')
    merged = janus.JanusUMM(JanusForConditionalGeneration.from_pretrained(tmp_path / 'merged').eval(), umm.tok,
                            caption_prompt='<caption>')
    torch.testing.assert_close(merged.understand_loss(z, batch['questions'], batch['answers']), ours,
                               rtol=1e-4, atol=1e-4)


# The role format of the hub checkpoints' chat template (deepseek-community/Janus-Pro-*, chat_template.jinja; not in
# the pip package), for the turns used here, written as a small template of our own: "<|User|>: " then an image's
# <image_placeholder> and a newline, the text, a blank line; "<|Assistant|>:" (then " " and the answer).
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|User|>: {% for c in m['content'] %}"
                 "{{ '<image_placeholder>\\n' if c['type'] == 'image' else c['text'] }}{% endfor %}{{ '\\n\\n' }}"
                 "{% else %}<|Assistant|>: {{ m['content'][0]['text'] }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|Assistant|>:{% endif %}")


@pytest.mark.parametrize('system', [False, True])  # tiny-janus; the hub checkpoints (use_default_system_prompt)
def test_prompt_ids_equal_what_janus_processor_builds(umm, system):
    """The ids the LM reads (BOS, system prompt, roles, <boi> N x <image_placeholder> <eoi>) are those transformers'
    JanusProcessor builds with the hub's role format (CHAT_TEMPLATE), for a question with an image, the question
    plus its answer (ours: ' a' tokenized alone, then <eos>, the hub template's separator after an assistant turn)
    and a t2i prompt. The word-level tokenizer reads DEFAULT_SYSTEM_PROMPT's words as <unk>: its text is
    transformers' own. Not checked: the hub template itself, which is not here (only its role format, above)."""
    from transformers import JanusImageProcessor, JanusProcessor
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT
    ours = janus.JanusUMM(umm.janus, umm.tok, DEFAULT_SYSTEM_PROMPT if system else '')
    proc = JanusProcessor(JanusImageProcessor(size={'height': 32, 'width': 32}), umm.tok, CHAT_TEMPLATE,
                          use_default_system_prompt=system, num_image_tokens=umm.grid ** 2)
    q, a = PROMPTS[1], 'yes'
    user = {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': q}]}

    def ids(messages, **kw):  # the template's text (a generation prompt after a user turn), then the processor
        text = proc.apply_chat_template(messages, add_generation_prompt=messages[-1]['role'] == 'user')
        return proc(text=text, **kw)['input_ids'][0].tolist()
    image = torch.rand(3, 32, 32)
    assert ours._prompt(q) == ids([user], images=[image])
    answer = {'role': 'assistant', 'content': [{'type': 'text', 'text': a}]}
    assert ours._prompt(q) + ours._ids(' ' + a) == ids([user, answer], images=[image])  # then our <eos>
    t2i = {'role': 'user', 'content': [{'type': 'text', 'text': PROMPTS[0]}]}
    assert ours._t2i_prompt(PROMPTS[0]) == ids([t2i], generation_mode='image')  # no system prompt, then <boi>


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """tiny-janus saved as a hub directory: config, weights, tokenizer."""
    torch.manual_seed(0)
    umm, d = tiny_janus.build_tiny_janus(), tmp_path_factory.mktemp('tiny-janus')
    umm.janus.save_pretrained(d)
    umm.tok.save_pretrained(d)
    return d


def test_loading_is_strict_and_names_the_keys(saved, tmp_path):
    import shutil
    from safetensors.torch import load_file, save_file
    for change, match in [('drop', r'missing keys \(1\): lm_head\.weight'), ('add', r'unexpected keys.*extra\.w')]:
        d = tmp_path / change
        shutil.copytree(saved, d)
        weights = load_file(d / 'model.safetensors')
        if change == 'drop':
            del weights['lm_head.weight']
        else:
            weights['extra.w'] = torch.zeros(1)
        save_file(weights, d / 'model.safetensors', metadata={'format': 'pt'})
        with pytest.raises(ValueError, match=match):
            backbones.load_backbone(str(d), dtype=torch.float32)
    # DeepSeek's original format: say what to download or convert, not "missing weights"
    (tmp_path / 'original').mkdir()
    (tmp_path / 'original' / 'config.json').write_text('{"model_type": "multi_modality"}')
    with pytest.raises(ValueError, match='original.*deepseek-community/Janus-Pro-7B.*convert_janus_weights_to_hf'):
        backbones.load_backbone(str(tmp_path / 'original'))


def test_weights_load_straight_onto_the_given_device(saved, monkeypatch):
    """Each torchrun rank passes its device: transformers puts every tensor there as it reads it (device_map), so
    no rank holds a full copy in host RAM first. On a CPU-only machine the device is the CPU."""
    from transformers import JanusForConditionalGeneration
    device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    seen, load = {}, JanusForConditionalGeneration.from_pretrained
    monkeypatch.setattr(JanusForConditionalGeneration, 'from_pretrained',
                        lambda *a, **k: seen.update(k) or load(*a, **k))  # records the keywords
    umm = backbones.load_backbone(str(saved), dtype=torch.float32, device=device)
    assert seen['device_map'] == {'': device} and {p.device for p in umm.parameters()} == {torch.device(device)}


def test_a_run_prints_no_deprecation_warnings(batch):
    """Build, LoRA, activation checkpointing, a loss, greedy answers and t2i (both KV-cache loops): transformers and
    peft raise no FutureWarning or DeprecationWarning on the pinned versions."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        umm = backbones.load_backbone('tiny-janus').add_lora().checkpoint_activations()
        z = umm.encode(batch['images'][:2])
        umm.understand_loss(z, batch['questions'][:2], batch['answers'][:2]).sum().backward()
        with torch.no_grad():
            umm.eval().answer(z, batch['questions'][:2], max_new_tokens=2)
            umm.t2i_codes(PROMPTS[:1])
    assert not [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
