"""The tiny models shipped with opsd, and how they are built (`opsd tiny-model build`).

`tiny` is a character-level Llama small enough to train on a laptop CPU, saved as a
Hugging Face directory (tiny/models/tiny/) and loaded by the same code as any other
model. It is pretrained on arithmetic problems (tiny/arithmetic.py), most of them with a
teacher context that holds the answer, so that it can read hints in context but cannot
yet add well on its own: exactly the gap self-distillation closes.

`tiny-tools` (tiny/models/tiny-tools/) is the same model pretrained further on episodes
of the `lookup` tool task (tiny/tools.py): alone it rarely uses the tool well, with a
successful sibling or feedback in its context it nearly always does.

What both share (tokenizer, architecture, the pretraining loop) is in tiny/pretrain.py;
tiny/build.py builds either. The trainer loads them by their aliases
(trainer/model_names.py) and never imports this package.
"""
