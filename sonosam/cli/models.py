"""`sonosam models`: the registered models, what prompts they take and where their weights are."""

from ..models import list_models, weights, weights_path


def register(subparsers):
    parser = subparsers.add_parser("models", help="list models and where their weights are")
    parser.set_defaults(func=run)


def run(args):
    print(f"weights cache: {weights.cache_dir()}")
    for spec in list_models():
        path = weights_path(spec)
        where = str(path) if path else f"not here (get it from {spec.where_to_get})"
        prompts = ", ".join(sorted(spec.prompt_kinds))
        print(f"{spec.name:14s} {spec.image_size:5d} px  prompts: {prompts:18s} {spec.description}\n"
              f"{'':14s} weights: {where}")
