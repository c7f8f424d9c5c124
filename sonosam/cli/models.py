"""`sonosam models`: the registered models, what prompts they take and where their weights are;
`--json` for programs (the Slicer module), `--download NAME` to fetch official weights (checksum verified)."""

import json

from ..errors import WeightsNotAvailableError


def register(subparsers):
    parser = subparsers.add_parser("models", help="list models and where their weights are; download weights")
    parser.add_argument("--json", action="store_true", help="one JSON list on stdout (name, prompt_kinds, weights, ...)")
    parser.add_argument("--download", metavar="NAME", help="download NAME's official weights into the cache folder")
    parser.set_defaults(func=run)


def describe(spec) -> dict:
    from ..models import weights_path  # torch: imported only when the command runs

    path = weights_path(spec)
    return {"name": spec.name, "description": spec.description, "prompt_kinds": sorted(spec.prompt_kinds),
            "image_size": spec.image_size, "weights": str(path) if path else None,
            "downloadable": bool(spec.url), "where_to_get": spec.where_to_get}


def run(args):
    from ..models import get_spec, list_models, weights, weights_path

    if args.download:
        spec = get_spec(args.download)
        if weights_path(spec) is not None:
            print(f"{spec.name}: weights already at {weights_path(spec)}")
            return 0
        if not spec.url:
            raise WeightsNotAvailableError(f"{spec.name} has no public download; get it from {spec.where_to_get} "
                                           "and give its path as the model's checkpoint.")
        path = weights.download(spec.url, weights.cache_dir() / spec.filename, spec.digest, progress=True)
        print(f"{spec.name}: downloaded to {path}")
        return 0
    if args.json:
        print(json.dumps([describe(spec) for spec in list_models()]))
        return 0
    print(f"weights cache: {weights.cache_dir()}")
    for spec in list_models():
        path = weights_path(spec)
        where = str(path) if path else f"not here (get it from {spec.where_to_get})"
        prompts = ", ".join(sorted(spec.prompt_kinds))
        print(f"{spec.name:14s} {spec.image_size:5d} px  prompts: {prompts:18s} {spec.description}\n"
              f"{'':14s} weights: {where}")
    return 0
