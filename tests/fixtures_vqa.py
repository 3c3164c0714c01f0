"""Tiny files in the official formats the paper's data come in: VQAv2's questions / annotations JSONs with a COCO
folder (COCO_train2014_<12-digit id>.jpg), and CC3M-style caption pairs (TSV and JSON lines)."""

import json
import os

import numpy as np
from PIL import Image

ANSWERS = (['yes'] * 7 + ['no'] * 3, ['2', 'two', 'Two', '3', '2', 'three', '2', '2', '3', 'two'],
           ['red'] * 4 + ['Red.'] * 2 + ['blue'] * 4)


def write_vqa(root, images=4, per_image=3, subtype='train2014', seed=0):
    """`images` COCO images of 40 x 30 px and `per_image` questions each; returns (questions, annotations, folder)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, subtype)
    os.makedirs(folder, exist_ok=True)
    questions, annotations = [], []
    for i in range(images):
        image_id = 1000 + i
        pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f'COCO_{subtype}_{image_id:012d}.jpg'))
        for k in range(per_image):
            qid = image_id * 10 + k
            answers = ANSWERS[(i + k) % len(ANSWERS)]
            questions.append(dict(image_id=image_id, question=f'what is in picture {i} number {k}?', question_id=qid))
            annotations.append(dict(question_id=qid, image_id=image_id, multiple_choice_answer=answers[0],
                                    answer_type=['yes/no', 'number', 'other'][k % 3],
                                    answers=[dict(answer=a, answer_confidence='yes', answer_id=j + 1)
                                             for j, a in enumerate(answers)]))
    q_path, a_path = os.path.join(root, 'questions.json'), os.path.join(root, 'annotations.json')
    with open(q_path, 'w') as f:
        json.dump(dict(info={}, task_type='Open-Ended', data_type='mscoco', license={}, data_subtype=subtype,
                       questions=questions), f)
    with open(a_path, 'w') as f:
        json.dump(dict(info={}, license={}, data_subtype=subtype, annotations=annotations), f)
    return q_path, a_path, folder


def write_captions(root, n=6, kind='tsv', seed=1):
    """`n` image/caption pairs, images beside the file in images/; returns the file's path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'images'), exist_ok=True)
    rows = []
    for i in range(n):
        name = os.path.join('images', f'{i:05d}.jpg')
        Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).save(os.path.join(root, name))
        rows.append((f'a picture of the number {i}', name))
    path = os.path.join(root, f'pairs.{kind}')
    with open(path, 'w') as f:
        for caption, name in rows:
            f.write(f'{caption}\t{name}\n' if kind == 'tsv' else json.dumps(dict(image=name, caption=caption)) + '\n')
    return path
