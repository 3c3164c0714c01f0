"""
The paper's training data from local files in their official formats (Appendix B.1): the VQAv2 train split for the
understanding branch and a CC3M subset of image/caption pairs "as text-image supervision for the generative branch".
Nothing is downloaded. The question and caption lists are read at start; each image is read only when its batch is
drawn, so 443k questions never hold their images in memory.

    python train.py --backbone janus-pro-7b --data vqav2 \\
        --questions v2_OpenEnded_mscoco_train2014_questions.json --annotations v2_mscoco_train2014_annotations.json \\
        --images train2014/ --captions cc3m_100k.tsv --judge ViT-L-14:/weights/open_clip_vit_l14.bin

Formats:
- VQAv2: the official questions JSON {"data_subtype", "questions": [{"question_id", "image_id", "question"}]}, the
  official annotations JSON {"annotations": [{"question_id", "answers": [{"answer"}] x 10, "answer_type"}]} and a
  COCO image folder with COCO_<data_subtype>_<image_id:012d>.jpg (benchdata.load_vqa reads all three). The target
  is the majority of the 10 human answers (after VQA normalisation); the 10 are kept for scorers.vqa_score.
- Captions (CC3M-style): TSV rows `caption<TAB>image` (CC3M's column order; the image a path relative to the file)
  or JSON lines {"image": ..., "caption": ...}.
A missing or malformed file fails at start naming itself and its expected format. An image that cannot be read when
its batch is drawn is skipped (the next one is read instead) and counted in `skipped`, never a crash mid-run.
"""

import collections
import csv
import json
import os

from torch.utils.data import Dataset

import benchdata
import scorers


def majority_answer(answers):
    """The most frequent of the human answers after VQA normalisation; a tie goes to the one the annotators gave
    first. Returned as the annotator wrote it (the first spelling of the winning normal form)."""
    normal = [scorers.normalize_answer(a) for a in answers]  # "Two.", "two" and "2" are one answer
    counts = collections.Counter(normal)
    best = max(counts.values())
    return next(a for a, n in zip(answers, normal) if counts[n] == best)  # annotator order breaks a tie


class Streamed(Dataset):
    """Items with an image path, read and resized when drawn; an unreadable image is skipped and counted."""

    def __init__(self, items, image_size=None):
        if not items:
            raise ValueError("no items to train on")
        self.items, self.unreadable = items, set()  # paths that failed once are not read again
        self.image_size = image_size  # the backbone's; train.py sets it once the backbone is built

    def __len__(self):
        return len(self.items)

    @property
    def skipped(self):  # unreadable images met so far
        return len(self.unreadable)

    def __getitem__(self, i):
        for k in range(len(self.items)):  # the next readable one, so batches keep their size
            item = self.items[(i + k) % len(self.items)]
            if item['image'] in self.unreadable:
                continue
            try:
                image = benchdata.load_image(item['image'], self.image_size)  # (3, s, s) in [0, 1]
            except (OSError, ValueError, SyntaxError):  # PIL: missing, truncated, not an image
                self.unreadable.add(item['image'])
                continue
            return {**{k: v for k, v in item.items() if k != 'image'}, 'image': image}  # path -> its pixels
        raise RuntimeError(f"none of the {len(self.items)} images can be read (first: {self.items[0]['image']})")


def vqav2(questions, annotations, images, hold_out=0, image_size=None):
    """VQAv2 train questions -> (train, val) datasets of samples {'image', 'question', 'answer', 'qtype', 'caption',
    'answers', 'id'}: the questions of the last images of the file, whole images, are held out for the val score
    (`hold_out` questions at least; val is None for 0). The caption the semantic filter compares with is the question
    and its answer; the prompt carries the short-answer suffix benchmarks.py asks with (benchdata.SHORT)."""
    for flag, path, kind in (('--questions', questions, 'file'), ('--annotations', annotations, 'file'),
                             ('--images', images, 'dir')):
        if not path:
            raise FileNotFoundError(f"{flag}: --data vqav2 needs it (the official VQA JSONs and a COCO image folder)")
        if not (os.path.isfile(path) if kind == 'file' else os.path.isdir(path)):
            raise FileNotFoundError(f"{flag}: {path!r} is not a {kind}")
    items = benchdata.load_vqa(questions, images, annotations)  # errors name the file and its format
    # hold out whole images, so no val question shares its picture with a training one (VQAv2 has ~5 per image)
    per_image, held, count = collections.Counter(it['image'] for it in items), set(), 0
    for item in reversed(items):  # whole images from the end of the file until `hold_out` questions are held
        if count >= hold_out:
            break
        if item['image'] not in held:
            held.add(item['image'])
            count += per_image[item['image']]
    parts = {False: [], True: []}  # keyed by "held out?": train, val
    for it in items:
        # the bare question (the prompt less SHORT) and the training target, one of the 10 as an annotator wrote it
        question, target = it['prompt'][:-len(benchdata.SHORT)], majority_answer(it['answers'])
        parts[it['image'] in held].append(dict(image=it['image'], question=it['prompt'], answer=target,
                                               answers=it['answers'], qtype=it['answer_type'],
                                               caption=f"{question} {target}", id=it['id']))
    if not parts[False]:
        raise ValueError(f"--val-size {hold_out} holds out every question of {questions!r}; lower it")
    return Streamed(parts[False], image_size), Streamed(parts[True], image_size) if parts[True] else None


class CaptionPairs(Streamed):
    """CC3M-style image/caption pairs as samples {'image', 'caption'}: TSV `caption<TAB>image` or JSON lines
    {"image", "caption"}; image paths relative to the file."""

    def __init__(self, path, image_size=None):
        form = "CC3M-style pairs: TSV rows 'caption<TAB>image' or JSON lines {\"image\", \"caption\"}"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--captions: {path!r} not found; expected {form}")
        root, pairs = os.path.dirname(os.path.abspath(path)), []  # image paths are relative to the file
        with open(path, encoding='utf-8', newline='') as f:  # newline='': csv handles quoted line breaks itself
            if path.endswith(('.jsonl', '.json')):
                for k, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        r = json.loads(line)
                        pairs.append((r['caption'], r['image']))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"--captions: {path!r} line {k + 1} is not {{\"image\", \"caption\"}}; "
                                         f"expected {form}") from None
            else:
                for k, row in enumerate(csv.reader(f, delimiter='\t')):
                    if len(row) < 2 or not row[0].strip():
                        raise ValueError(f"--captions: {path!r} row {k + 1} has no caption<TAB>image; expected {form}")
                    pairs.append((row[0], row[1]))  # CC3M's order: caption, then image (extra columns ignored)
        if not pairs:
            raise ValueError(f"--captions: {path!r} holds no pairs; expected {form}")
        super().__init__([dict(caption=c, image=os.path.join(root, i)) for c, i in pairs], image_size)



def vqa_accuracy(umm, dataset, batch_size=32):
    """Mean VQA soft accuracy (scorers.vqa_accuracy against the 10 human answers) of U's greedy free-form answers."""
    import torch
    was_training, scores = umm.training, []
    umm.eval()  # LoRA dropout off; restored below
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([b['image'] for b in batch]).to(next(umm.parameters()).device)  # (b, 3, s, s)
            # greedy, at most 10 new tokens: VQAv2 answers are a word or a short phrase (the prompt asks for one)
            predictions = umm.answer(umm.encode(images), [b['question'] for b in batch], max_new_tokens=10)
            # VQAv2's official soft accuracy: min(1, other annotators matching / 3), averaged over each one left out
            scores += [scorers.vqa_accuracy(p, b['answers']) for p, b in zip(predictions, batch)]
    umm.train(was_training)
    return sum(scores) / len(scores)


def vqa_base_vs_trained(umm, dataset, batch_size=32, label='trained'):
    """VQA accuracy on the held-out questions with and without the LoRA adapter; prints one line, returns both."""
    trained = vqa_accuracy(umm, dataset, batch_size)  # two passes over the held-out set: twice the eval time
    with umm.lm.disable_adapter():  # peft: the base model, adapters off
        base = vqa_accuracy(umm, dataset, batch_size)
    print(f"\nheld-out VQAv2 accuracy ({len(dataset)} questions): base {base:.4f}, {label} {trained:.4f}, "
          f"diff {trained - base:+.4f}")
    return {'base': {'vqav2': base}, 'trained': {'vqav2': trained}}
