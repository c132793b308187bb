"""Datasets and readers: CIFAR pickles, idx files (MNIST / Fashion-MNIST), the embedded
Fashion-MNIST-LT, list files (ImageNet-LT / Places-LT / iNaturalist), image folders, the bad-image
scan, and the registry ``build_dataset`` that names them all. Public names: ``longtail.data``."""
