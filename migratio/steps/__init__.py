"""The step registry: each site type's steps by name, and its default pipeline."""

from migratio.conf.sites import Site
from migratio.errors import ConfigError
from migratio.pipeline.runner import Step, unmet_need
from migratio.steps import aws, common, openstack

REGISTRY: dict[str, dict[str, type[Step]]] = {
    "openstack": {
        s.name: s
        for s in (common.Locate, openstack.Dedupe, common.Inspect, common.Convert, openstack.Transfer,
                  openstack.Register, openstack.Verify, openstack.BootCheck, common.Cleanup)
    },
    "aws": {
        s.name: s
        for s in (common.Locate, aws.Dedupe, common.Inspect, aws.Convert, aws.Import, aws.Tag,
                  common.Cleanup)
    },
}

DEFAULT_PIPELINES: dict[str, list[str]] = {
    "openstack": ["locate", "dedupe", "inspect", "convert", "transfer", "register", "verify", "cleanup"],
    "aws": ["locate", "dedupe", "inspect", "convert", "import", "tag", "cleanup"],
}


def build_steps(site: Site) -> list[Step]:
    """The site's pipeline as step objects.

    Raises:
        ConfigError: naming the site conf, for an unknown step (listing the valid ones), a step
            placed before every step that provides what it needs, or a step the conf lacks keys for.
    """
    names = site.pipeline or DEFAULT_PIPELINES[site.type]
    known = REGISTRY[site.type]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"{site.path}: unknown step '{unknown[0]}' in pipeline for type {site.type} "
            f"(valid steps: {', '.join(known)})"
        )
    unmet = unmet_need([known[n] for n in names])
    if unmet:
        step, fact = unmet
        providers = " or ".join(f"'{n}'" for n, s in known.items() if fact in s.provides)
        raise ConfigError(f"{site.path}: step '{step.name}' in pipeline for type {site.type} needs {fact.value}: "
                          f"put {providers} before it")
    problem = next(filter(None, (known[n].conf_problem(site) for n in names)), None)
    if problem:
        raise ConfigError(f"{site.path}: {problem}")
    return [known[n]() for n in names]
