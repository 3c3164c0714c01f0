"""
`tiny-janus`: Janus-Pro's classes (janus.py) at tiny sizes with random weights, and a word-level tokenizer with Janus's
special tokens built offline. The Janus path's CPU tests and benchmarks run on it; no weights are needed.

    python train.py --backbone tiny-janus --filter none --steps 20   # the Janus classes, tiny and random, on CPU
    python model.py --bench-decode --batch 16                        # regen vs t2i wall time per candidate (smoke.py)

The tokenizer also serves the full-size architectures with random weights (smoke.py: --smoke, --eps-probe). A file of
its own so that janus.py is the real model alone.
"""

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import JanusForConditionalGeneration, PreTrainedTokenizerFast

import data
from janus import JanusUMM, janus_config

TINY_JANUS = dict(  # `tiny-janus`: 32 px images; the SigLIP patches and the VQ codes are both a 16 x 16 grid
    lm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=1024),
    vision=dict(image_size=32, patch_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_image_tokens=256),
    # two VQ levels take 32 px to the 16 x 16 grid; GroupNorm(32) needs 32 channels; no extra res blocks, so the VQ
    # stays cheap next to the LLM pass, as in the real model (where a 7B pass costs ~100x the VQ-16)
    vq=dict(base_channels=32, channel_multiplier=[1, 1], num_res_blocks=0, latent_channels=32, num_embeddings=512),
)
JANUS_SPECIALS = ('<pad>', '<unk>', '<bos>', '<eos>', '<|User|>', '<|Assistant|>', '<begin_of_image>',
                  '<image_placeholder>', '<end_of_image>', '<caption>')


def janus_word_tokenizer():
    """tiny-janus's tokenizer: word level over data.VOCAB and ':', with Janus's special tokens, built offline."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate((*JANUS_SPECIALS, ':', *data.VOCAB))}, '<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix='##', cleanup=False)  # joins words with single spaces
    tok.add_special_tokens([AddedToken(s, special=True) for s in JANUS_SPECIALS])  # split out before the words
    tok.post_processor = processors.TemplateProcessing(single='<bos> $A', special_tokens=[('<bos>', 2)])  # as Llama's
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', unk_token='<unk>', bos_token='<bos>',
                                   eos_token='<eos>', extra_special_tokens=dict(  # the names JanusProcessor reads
                                       image_token='<image_placeholder>', boi_token='<begin_of_image>',
                                       eoi_token='<end_of_image>'))


def build_tiny_janus(decode='regen', gen_temperature=None, **_):
    """`tiny-janus`: the Janus classes with TINY_JANUS sizes, random init (no weights; `init` is ignored)."""
    tok = janus_word_tokenizer()
    lm = dict(TINY_JANUS['lm'], vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id)
    config = janus_config(lm, TINY_JANUS['vision'], TINY_JANUS['vq'], tok.convert_tokens_to_ids('<image_placeholder>'))
    return JanusUMM(JanusForConditionalGeneration(config), tok, caption_prompt='<caption>', decode=decode,
                    gen_temperature=gen_temperature)
