"""The embedded STAT student: a small GPT-2-style causal LM over characters, built from config with transformers.

``build_tokenizer()`` makes a character-level ``PreTrainedTokenizerFast`` (a WordLevel model over single
characters, from the ``tokenizers`` library) so that the student saved with ``save_pretrained`` loads
elsewhere with ``AutoTokenizer`` / ``AutoModelForCausalLM``. Training uses a fast local encoder with the same
ids (a test checks they agree). ``sft_loss`` is the plain next-token cross-entropy on the solution tokens
only (the question is the prompt). ``greedy_solve`` decodes with ``model.generate`` in buckets of equal
prompt length, so no padding or position-id shifting is involved.

Left out: sampling at temperature 0.1 (the paper's decoding); the embedded runs decode greedily.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from papers.stat.arith import VOCAB

PAD, EOS = "<pad>", "<eos>"
SPECIALS = (PAD, EOS)


def vocab() -> dict[str, int]:
    table = {PAD: 0, EOS: 1}
    for ch in VOCAB:
        table[ch] = len(table)
    return table


class CharCodec:
    """Encodes/decodes the arithmetic alphabet with the ids of ``build_tokenizer``."""

    def __init__(self):
        self.stoi = vocab()
        self.itos = {i: s for s, i in self.stoi.items()}
        self.pad_id, self.eos_id = self.stoi[PAD], self.stoi[EOS]

    def __len__(self) -> int:
        return len(self.stoi)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(self.itos[i])
        return "".join(out)


def build_tokenizer():
    """A character-level fast tokenizer with the same ids as ``CharCodec`` (saved next to the model)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=PAD)


def build_student(n_layer: int, n_embd: int, n_head: int, n_positions: int, dropout: float = 0.0):
    """A GPT-2-style causal LM from config (random init; no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    codec = CharCodec()
    config = GPT2Config(
        vocab_size=len(codec),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=codec.eos_id,
        eos_token_id=codec.eos_id,
        pad_token_id=codec.pad_id,
    )
    return GPT2LMHeadModel(config)


def encode_batch(pairs: list[tuple[str, str]], codec: CharCodec, device=None):
    """(question, solution) pairs -> input_ids, attention_mask, labels (loss on solution + EOS only)."""
    seqs, starts = [], []
    for q, s in pairs:
        ids = codec.encode(q) + codec.encode(s) + [codec.eos_id]
        seqs.append(ids)
        starts.append(len(q))
    n = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), n), codec.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, (x, st) in enumerate(zip(seqs, starts)):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, st : len(x)] = torch.tensor(x[st:])
    if device is not None:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    return ids, mask, labels


def sft_loss(model, ids, mask, labels) -> torch.Tensor:
    """Next-token cross-entropy averaged over the solution tokens (plain SFT)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def greedy_decode(model, prompts: torch.Tensor, max_new_tokens: int, eos_id: int) -> torch.Tensor:
    """Greedy continuation of equal-length prompts with the model's KV cache.

    A plain loop instead of ``model.generate``: for a 0.5M-parameter model the per-step overhead of
    ``generate`` (logits processors, stopping criteria) costs more than the forward pass itself.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model(input_ids=prompts, cache=cache, use_cache=True, logits_to_keep=1)
    done = torch.zeros(prompts.size(0), dtype=torch.bool, device=prompts.device)
    new = []
    for _ in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        new.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
        out = model(input_ids=nxt[:, None], cache=cache, use_cache=True)
    return torch.stack(new, 1)


@torch.no_grad()
def greedy_solve(
    model, questions: list[str], codec: CharCodec, max_new_tokens: int = 72, batch_size: int = 1024, device=None
) -> list[str]:
    """Greedy solutions for ``questions``, batched by prompt length (no padding needed)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_len[len(q)].append(i)
    out: list[str] = [""] * len(questions)
    limit = model.config.n_positions
    for length, idx in sorted(by_len.items()):
        for k in range(0, len(idx), batch_size):
            chunk = idx[k : k + batch_size]
            ids = torch.tensor([codec.encode(questions[i]) for i in chunk], device=device)
            gen = greedy_decode(model, ids, min(max_new_tokens, limit - length), codec.eos_id)
            for row, i in zip(gen.tolist(), chunk):
                out[i] = codec.decode(row)
    model.train(was_training)
    return out
