"""Classification pretraining (Sec. 3.4 ImageNet, Sec. 4.2 CIFAR-10): the classifier, its data sets,
transforms and test protocols, and the trainer. The paper's studies built on it (degradation,
pretraining hand-off) are in projects/.

Importing registers the data sets imagenet_{train,val}, cifar10_{train,val,trainval,test} and the
generated cls_demo_{train,val} (under $RESNET_DET_DATASETS; evaluator_type "classification").
"""
from .cifar import load_cifar10, read_cifar_batch, write_cifar_batch
from .data import (build_classification_test_loader, build_classification_train_loader, compute_mean_image,
                   get_classification_dicts, load_cifar_dicts, load_image, load_image_folder,
                   register_classification_builtins)
from .model import Classifier, build_classifier, build_net, load_classifier_weights
from .trainer import ClassificationTrainer, run_classification
from .transforms import TestTransform, TrainTransform

register_classification_builtins()

__all__ = ["Classifier", "ClassificationTrainer", "build_classifier", "build_net", "load_classifier_weights",
           "build_classification_train_loader", "build_classification_test_loader", "compute_mean_image",
           "get_classification_dicts", "load_image_folder", "load_cifar_dicts", "load_image",
           "register_classification_builtins", "TrainTransform", "TestTransform",
           "load_cifar10", "read_cifar_batch", "write_cifar_batch", "run_classification"]
