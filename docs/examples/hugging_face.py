import numpy as np
import torch
import transformers

import edgeexit
from edgeexit.examples import train_multi_exit
from edgeexit.examples.hf import multi_exit_encoder

torch.manual_seed(0)
config = transformers.BertConfig(  # a small stand-in for yours
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, vocab_size=100
)
bert = transformers.BertForSequenceClassification(config)  # or .from_pretrained("yours")
ids = torch.randint(1, 100, (200, 12))  # stand-ins: your tokenized texts, padded to 12
mask = torch.ones_like(ids)  # 1 for a token, 0 for padding
labels = (ids[:, 0] > 50).long()  # and their classes

model = multi_exit_encoder(bert, num_labels=2)  # new exit heads on every layer
train_multi_exit(model, (ids, mask), labels, epochs=2, freeze_backbone=True)  # the heads
edgeexit.save(model, "bert-ee.pt", example_inputs=(ids[:4], mask[:4]))  # no factory needed
edgeexit.export(model, (ids[:4], mask[:4]), "bert-bundle/")  # validated against torch
# the bundle's inputs are input_ids and attention_mask: data files name their arrays so
np.savez("cal.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(), y=labels.numpy())
