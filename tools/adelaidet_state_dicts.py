"""Write AdelaiDet's CondInst state dicts (key, shape, dtype) as TSV files, the references of the
key-for-key tests (tests/assets/adelaidet_state_dicts/).

Runs only under the peer environment's python (the real detectron2 + AdelaiDet; tools/peer_env.sh):

    PYTHONPATH=$PWD $PEER_PY tools/adelaidet_state_dicts.py --out tests/assets/adelaidet_state_dicts \\
        MS_R_50_3x_sem MS_R_50_BiFPN_1x MS_R_50_BiFPN_3x_sem MS_R_101_BiFPN_3x_sem
"""
import argparse
import os

import adet  # noqa: F401  (registers AdelaiDet's models)
import torch
from adet.config import get_cfg
from detectron2.modeling import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="names under AdelaiDet's configs/CondInst/")
    parser.add_argument("--out", required=True, help="folder for <config>.tsv")
    args = parser.parse_args()
    config_dir = os.path.join(os.path.dirname(os.path.dirname(adet.__file__)), "configs", "CondInst")
    os.makedirs(args.out, exist_ok=True)
    for name in args.configs:
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(config_dir, f"{name}.yaml"))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        sd = model.state_dict()
        params = list(model.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        with open(os.path.join(args.out, f"{name}.tsv"), "w") as f:
            f.write(f"# AdelaiDet CondInst {name} state_dict, by tools/adelaidet_state_dicts.py "
                    f"(AdelaiDet 3672122, detectron2 0.6, torch {torch.__version__})\n")
            f.write(f"# {len(sd)} entries; parameters total={total} trainable={trainable}\n")
            f.write("# key\tshape\tdtype\n")
            for key, value in sd.items():
                f.write(f"{key}\t{tuple(value.shape)}\t{str(value.dtype).replace('torch.', '')}\n")
        print(f"{name}: {len(sd)} keys, {total} parameters ({trainable} trainable)")


if __name__ == "__main__":
    main()
