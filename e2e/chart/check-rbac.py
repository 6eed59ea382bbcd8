#!/usr/bin/env python3
"""Checks the RBAC objects of a rendered chart for least privilege.

  helm template ... | e2e/chart/check-rbac.py [--namespaced] [--expect-scale]
                                              [--expect-topics NS[,NS...]]
                                              [--expect-lease] [--expect-strimzi]
                                              [--expect-api] [FILE...]

Fails when:
  - a rule has a wildcard (`*`) anywhere: apiGroups, resources, verbs, resourceNames;
  - a rule touches Secrets or another sensitive resource (pods/exec, serviceaccounts/token,
    RBAC objects, ...), or uses escalate, bind, impersonate or deletecollection;
  - a rule grants nonResourceURLs;
  - Leases appear in a ClusterRole (leader election is namespaced), or in a Role outside the
    release namespace (given by the Lease Role's own namespace: every Lease Role must share it);
  - with --namespaced (single-namespace mode): any ClusterRole or ClusterRoleBinding exists;
  - a Pipeline-operator permission the operator needs is missing, or one it does not need
    for the given options (pipelines/scale, kafkatopics writes, kafkas reads, leases) is present;
  - KafkaTopics are granted in a ClusterRole, in a namespace outside --expect-topics, not in
    one of those, or with verbs beyond get, create, patch and delete (the scope that keeps a
    Pipeline from having a topic written into any namespace it likes);
  - Roles and RoleBindings are written without --expect-api (readApi.enabled), or with verbs
    beyond get, create, patch and delete, or in a ClusterRole in single-namespace mode.
"""

import argparse
import sys

import yaml

SENSITIVE = {
    ("", "secrets"), ("", "pods/exec"), ("", "pods/attach"), ("", "pods/portforward"),
    ("", "serviceaccounts/token"), ("", "nodes/proxy"),
    ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("certificates.k8s.io", "certificatesigningrequests/approval"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
}
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "deletecollection"}
WRITE_VERBS = {"create", "update", "patch", "delete"}
# KafkaTopics: get (the ownership check), create and patch (server-side apply), delete
# (deletionPolicy: delete). Never list or watch, never cluster-wide.
TOPIC_VERBS = {"get", "create", "patch", "delete"}
# The read API's objects (readApi.enabled): get (the ownership check), create and patch
# (server-side apply), delete (spec.api turned off). Never list, watch, bind or escalate.
API_VERBS = {"get", "create", "patch", "delete"}
API_RESOURCES = {
    ("", "services"), ("", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings"),
}

# (group, resource) -> verbs the operator needs in every configuration.
REQUIRED = {
    ("ferry.dev", "pipelines"): {"get", "list", "watch"},
    ("ferry.dev", "pipelines/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "events"): {"create", "patch"},
    # The worker pods' /status (docs/status-channel.md).
    ("", "pods"): {"list"},
}


def grants(objects):
    """Yields (object, rule, group, resource, verbs) for every RBAC rule."""
    for obj in objects:
        for rule in obj.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    yield obj, rule, group, resource, set(rule.get("verbs") or [])


def name_of(obj):
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{meta.get('name')}"


def check(objects, args):
    problems = []
    roles = [o for o in objects if o.get("kind") in ("Role", "ClusterRole")]
    bindings = [o for o in objects if o.get("kind") in ("RoleBinding", "ClusterRoleBinding")]
    if not roles:
        problems.append("no Role or ClusterRole rendered: the operator would have no permissions")

    for obj in roles:
        for rule in obj.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if "*" in (rule.get(field) or []):
                    problems.append(f"{name_of(obj)}: wildcard in {field}: {rule}")
            if rule.get("nonResourceURLs"):
                problems.append(f"{name_of(obj)}: grants nonResourceURLs {rule['nonResourceURLs']}")
            bad_verbs = DANGEROUS_VERBS & set(rule.get("verbs") or [])
            if bad_verbs:
                problems.append(f"{name_of(obj)}: dangerous verbs {sorted(bad_verbs)}")

    lease_namespaces = set()
    for obj, _rule, group, resource, verbs in grants(roles):
        base = resource.split("/")[0]
        if args.expect_api and (group, resource) in API_RESOURCES:
            extra = verbs - API_VERBS
            if extra:
                problems.append(f"{name_of(obj)}: {group or 'core'}/{resource} verbs {sorted(extra)} the read API does not need")
            continue
        if (group, resource) in SENSITIVE or (group == "" and base == "secrets"):
            problems.append(f"{name_of(obj)}: touches sensitive {group or 'core'}/{resource} ({sorted(verbs)})")
        if group == "coordination.k8s.io" and base == "leases":
            if obj["kind"] == "ClusterRole":
                problems.append(f"{name_of(obj)}: Leases in a ClusterRole; leader election needs only a Role in the release namespace")
            else:
                lease_namespaces.add(obj["metadata"].get("namespace"))
    if len(lease_namespaces) > 1:
        problems.append(f"Lease rules in several namespaces {sorted(lease_namespaces)}: only the release namespace needs them")

    if args.namespaced:
        for obj in roles + bindings:
            if obj["kind"].startswith("Cluster"):
                problems.append(f"{name_of(obj)}: cluster-wide in single-namespace mode; a namespaced Role/RoleBinding would do")

    # What is granted, merged over every rule.
    granted = {}
    for _obj, _rule, group, resource, verbs in grants(roles):
        granted.setdefault((group, resource), set()).update(verbs)
    for key, verbs in REQUIRED.items():
        missing = verbs - granted.get(key, set())
        if missing:
            problems.append(f"missing {key[0] or 'core'}/{key[1]} verbs {sorted(missing)} the operator needs")

    topic_namespaces = set(filter(None, (args.expect_topics or "").split(",")))
    topic_grants = {}
    for obj, _rule, group, resource, verbs in grants(roles):
        if group != "kafka.strimzi.io" or resource.split("/")[0] != "kafkatopics":
            continue
        if obj["kind"] == "ClusterRole":
            problems.append(f"{name_of(obj)}: KafkaTopics in a ClusterRole; grant them by a Role in each Kafka namespace")
            continue
        ns = obj["metadata"].get("namespace")
        topic_grants.setdefault(ns, set()).update(verbs)
        extra = verbs - TOPIC_VERBS
        if extra:
            problems.append(f"{name_of(obj)}: KafkaTopic verbs {sorted(extra)} the operator does not use")
    for ns in sorted(set(topic_grants) - topic_namespaces):
        problems.append(f"KafkaTopic writes in namespace {ns}, which is not one of the Kafka namespaces {sorted(topic_namespaces)}")
    for ns in sorted(topic_namespaces - set(topic_grants)):
        problems.append(f"no KafkaTopic grant in Kafka namespace {ns}")
    for ns, verbs in sorted(topic_grants.items()):
        missing = TOPIC_VERBS - verbs
        if ns in topic_namespaces and missing:
            problems.append(f"KafkaTopic verbs {sorted(missing)} missing in namespace {ns}")
    if args.expect_topics and "patch" not in granted.get(("ferry.dev", "pipelines"), set()):
        problems.append("no patch on pipelines.ferry.dev: the finalizer of deletionPolicy: delete needs it")
    if not args.expect_topics and WRITE_VERBS & granted.get(("ferry.dev", "pipelines"), set()):
        problems.append("writes on pipelines.ferry.dev without manageTopics: only the topic finalizer needs them")

    optional = {
        ("ferry.dev", "pipelines/scale"): args.expect_scale,
        ("kafka.strimzi.io", "kafkas"): args.expect_strimzi or bool(args.expect_topics),
        ("kafka.strimzi.io", "kafkatopics"): bool(args.expect_topics),
        ("coordination.k8s.io", "leases"): args.expect_lease,
        ("rbac.authorization.k8s.io", "roles"): args.expect_api,
        ("rbac.authorization.k8s.io", "rolebindings"): args.expect_api,
        ("", "services"): args.expect_api,
        ("", "serviceaccounts"): args.expect_api,
    }
    for key, expected in optional.items():
        present = key in granted
        label = f"{key[0]}/{key[1]}"
        if expected and not present:
            problems.append(f"expected a grant on {label}, found none")
        if not expected and present:
            problems.append(f"unexpected grant on {label} {sorted(granted[key])}: this configuration does not need it")
    if not args.expect_topics and WRITE_VERBS & granted.get(("kafka.strimzi.io", "kafkas"), set()):
        problems.append("writes on kafkas.kafka.strimzi.io: the operator only reads Kafka resources")

    for obj in bindings:
        for subject in obj.get("subjects") or []:
            if subject.get("kind") != "ServiceAccount":
                problems.append(f"{name_of(obj)}: binds a {subject.get('kind')}, not the operator's ServiceAccount")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*")
    parser.add_argument("--namespaced", action="store_true", help="single-namespace mode: no cluster-wide RBAC allowed")
    parser.add_argument("--expect-scale", action="store_true", help="manualScaling is on")
    parser.add_argument("--expect-topics", metavar="NS[,NS...]", default="",
                        help="strimzi.manageTopics is on, with these Kafka namespaces")
    parser.add_argument("--expect-strimzi", action="store_true", help="strimzi.enabled is on")
    parser.add_argument("--expect-lease", action="store_true", help="leader election is on")
    parser.add_argument("--expect-api", action="store_true", help="readApi.enabled is on")
    args = parser.parse_args()

    texts = [open(f, encoding="utf-8").read() for f in args.files] if args.files else [sys.stdin.read()]
    objects = [d for t in texts for d in yaml.safe_load_all(t) if isinstance(d, dict) and d.get("kind")]
    problems = check(objects, args)
    rbac = [o for o in objects if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    if problems:
        for p in problems:
            print(f"RBAC: {p}", file=sys.stderr)
        print(f"RBAC check: {len(problems)} problem(s) in {len(rbac)} RBAC objects", file=sys.stderr)
        return 1
    kinds = ", ".join(sorted(name_of(o) for o in rbac))
    print(f"RBAC check: ok ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
