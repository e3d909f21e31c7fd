"""Training speed of the kka detector networks in PyTorch's Python API, for comparison with
`kka-worker baseline`.

Trains the same LeNet autoencoder (pretraining) and Deep SVDD encoder as kka on the normal
Fashion-MNIST training images of one class. Batch size, Adam settings and thread count match
kka's. Prints one JSON line with the images per second of each phase and the peak RSS.
With --data-loader the batches come from a torch.utils.data.DataLoader over a per-image
Dataset that converts each uint8 image to a float tensor, as the Deep SAD reference
implementation's loaders do (it converts through PIL and ToTensor, which costs more still).
Usage: .venv/bin/python bench/detector/torch_speed.py --threads 2 --pretrain-epochs 3 --epochs 3
"""

import argparse
import gzip
import json
import resource
import struct
import time

import torch
import torch.nn.functional as F
from torch import nn

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as handle:
        content = handle.read()
    magic = struct.unpack(">I", content[:4])[0]
    dims = 3 if magic == 2051 else 1
    shape = struct.unpack(">" + "I" * dims, content[4 : 4 + 4 * dims])
    values = torch.frombuffer(bytearray(content[4 + 4 * dims :]), dtype=torch.uint8)
    return values.reshape(shape)


def normal_images(normal_class, validation_fraction, seed):
    """Returns the uint8 training images of one class (N x 28 x 28) minus a validation slice."""
    images = read_idx(f"{DATA}/train-images-idx3-ubyte.gz")
    labels = read_idx(f"{DATA}/train-labels-idx1-ubyte.gz")
    selected = images[labels == normal_class]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(selected.shape[0], generator=generator)
    held_out = round(selected.shape[0] * validation_fraction)
    return selected[order[held_out:]].contiguous()


class PerImageDataset(torch.utils.data.Dataset):
    """Converts one uint8 image to a 1 x 28 x 28 float tensor in [0, 1] per item."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index].float().div(255.0).unsqueeze(0)


def conv_block(inputs, outputs):
    return nn.Conv2d(inputs, outputs, 5, padding=2, bias=False), nn.BatchNorm2d(outputs, eps=1e-4, affine=False)


class Encoder(nn.Module):
    """Two 5x5 conv blocks (8 and 4 channels), a 32-dimensional bias-free output layer."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = conv_block(1, 8)
        self.conv2, self.bn2 = conv_block(8, 4)
        self.fc_out = nn.Linear(4 * 7 * 7, 32, bias=False)

    def forward(self, x):
        x = F.max_pool2d(F.leaky_relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.leaky_relu(self.bn2(self.conv2(x))), 2)
        return self.fc_out(x.flatten(1))


class Decoder(nn.Module):
    """Mirror of the encoder with nearest-neighbour upsampling and a sigmoid output."""

    def __init__(self):
        super().__init__()
        self.deconv1 = nn.ConvTranspose2d(2, 4, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(4, eps=1e-4, affine=False)
        self.deconv2 = nn.ConvTranspose2d(4, 8, 5, padding=3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-4, affine=False)
        self.deconv3 = nn.ConvTranspose2d(8, 1, 5, padding=2, bias=False)

    def forward(self, z):
        x = F.interpolate(F.leaky_relu(z.view(z.shape[0], 2, 4, 4)), scale_factor=2)
        x = F.interpolate(F.leaky_relu(self.bn1(self.deconv1(x))), scale_factor=2)
        x = F.interpolate(F.leaky_relu(self.bn2(self.deconv2(x))), scale_factor=2)
        return torch.sigmoid(self.deconv3(x))


def run_epochs(images, epochs, batch_size, step, data_loader):
    """Runs `epochs` shuffled epochs, calling `step(batch)`; returns the seconds taken."""
    started = time.perf_counter()
    if data_loader:
        loader = torch.utils.data.DataLoader(PerImageDataset(images), batch_size=batch_size, shuffle=True)
        for _ in range(epochs):
            for batch in loader:
                step(batch)
    else:
        floats = images.float().div(255.0).unsqueeze(1)
        for _ in range(epochs):
            for indices in torch.randperm(floats.shape[0]).split(batch_size):
                step(floats[indices])
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--normal-class", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--data-loader", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = normal_images(args.normal_class, 0.1, 0)

    encoder, decoder = Encoder(), Decoder()
    autoencoder = nn.Sequential(encoder, decoder).train()
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=args.lr, weight_decay=5e-4)

    def pretrain_step(batch):
        optimizer.zero_grad()
        loss = (autoencoder(batch) - batch).square().sum(dim=(1, 2, 3)).mean()
        loss.backward()
        optimizer.step()

    pretrain_seconds = run_epochs(images, args.pretrain_epochs, args.batch_size, pretrain_step, args.data_loader)

    with torch.no_grad():
        center = encoder.eval()(images.float().div(255.0).unsqueeze(1)).mean(dim=0)
    encoder.train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=args.lr, weight_decay=5e-7)

    def train_step(batch):
        optimizer.zero_grad()
        loss = (encoder(batch) - center).square().sum(dim=1).mean()
        loss.backward()
        optimizer.step()

    train_seconds = run_epochs(images, args.epochs, args.batch_size, train_step, args.data_loader)
    count = images.shape[0]
    print(json.dumps({
        "implementation": "pytorch-python-dataloader" if args.data_loader else "pytorch-python",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_images": count,
        "batch_size": args.batch_size,
        "pretrain_images_per_second": count * args.pretrain_epochs / pretrain_seconds,
        "train_images_per_second": count * args.epochs / train_seconds,
        "seconds_per_epoch": train_seconds / args.epochs,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
