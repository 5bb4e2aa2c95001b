"""The image file, the compose stack and the Kubernetes manifests (deploy/, docs/deploy.md): valid for
their tools, offline, and in agreement with the code they run.

Schemas: the Compose specification's JSON schema shipped by check-jsonschema; the Kubernetes schemas
of a named version shipped by kubernetes-validate, on every overlay as `kubectl kustomize` renders it,
with and without the optional components. Agreement: every command goes through the real
`ood-monitor` argument parser, every configuration file and MONITOR_* variable through the real
settings loader, every probe path is a route the processes serve, ports and paths are those of the
configuration. The image itself is built and run by tests/integration/test_deploy_image.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.unit.deploy_files import (
    COMPONENTS, COMPOSE, CONTAINERFILE, IMAGE_NAME, KUBERNETES, OVERLAYS, Rendered, all_containers, compose,
    compose_path, configuration_problems, container_environment, containerfile_instructions, final_stage,
    image_environment, mounted_config, ood_monitor_commands, ood_monitor_services, parse_command, pod_spec,
    probe_paths, project_version, read_env_file, render, render_with_components, service_environment,
    settings_of, volume_targets,
)

KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")  # kubectl's version on these machines, and the newest schemas
ROLES = {"db", "run", "web", "scheduler"}


# --- Containerfile ---------------------------------------------------------------------------------


def test_containerfile_builds_on_a_python_base_given_as_argument_and_runs_as_non_root():
    instructions = containerfile_instructions()
    first = instructions[0]
    assert first.keyword == "ARG" and first.text == "PYTHON=python:3.11-slim-bookworm"
    stages = [i.text for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert all(stage.startswith("${PYTHON} AS ") for stage in stages)
    final = final_stage(instructions)
    (user,) = [i.text for i in final if i.keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, so runAsNonRoot can check it"
    assert [i.text for i in final if i.keyword == "ENTRYPOINT"] == ['["ood-monitor"]']
    (healthcheck,) = [i.text for i in final if i.keyword == "HEALTHCHECK"]
    assert "healthcheck.py" in healthcheck
    assert any(i.keyword == "ARG" and i.text.startswith("TORCH=") for i in instructions)


def test_image_environment_names_real_places_and_holds_no_secret():
    environment = image_environment(containerfile_instructions())
    from monitor.settings import ENV_PREFIX, ENV_SEPARATOR, SECRET_KEYS

    assert environment["MONITOR_CONFIG"] == "/etc/ood-monitor/monitor.toml"
    assert environment["MONITOR_MIGRATIONS_DIR"].endswith("/migrations")
    settings_variables = {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX) and ENV_SEPARATOR in k}
    for key in settings_variables:
        assert key.split(ENV_SEPARATOR)[1].lower() not in SECRET_KEYS and key != "MONITOR_STORE__URL"
    # Everything the processes write goes under the two writable places.
    writable = ("/var/lib/ood-monitor", "/var/cache/ood-monitor")
    assert environment["HOME"].startswith(writable)
    for key in ("MONITOR_CACHE_DIR", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert environment[key].startswith(writable), key
    config = settings_of((COMPOSE.parent / "container.toml").read_text())
    assert config.web.host == "0.0.0.0"
    for path in (config.model.cache_dir, config.jobs.report_dir, config.store.url.split("///")[-1]):
        assert path.startswith(writable), path


def test_image_default_configuration_is_valid():
    assert configuration_problems((COMPOSE.parent / "container.toml").read_text(), {}, "container.toml") == []


def test_the_build_context_leaves_out_environments_and_secrets():
    ignored = (CONTAINERFILE.parents[1] / ".dockerignore").read_text().split()
    for entry in (".venv", "var", ".git", "**/*.env"):
        assert entry in ignored


# --- compose ---------------------------------------------------------------------------------------


def test_compose_file_is_valid_for_the_compose_specification():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_fails_on_a_bad_field(tmp_path):
    """The validation above can fail: a misspelt service key is refused."""
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("    depends_on:\n", "    depend_on:\n", 1))
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "depend_on" in result.stdout + result.stderr


def test_compose_runs_every_role_as_its_own_service_with_a_command_the_code_accepts():
    document = compose()
    services = ood_monitor_services(document)
    roles = {}
    for name, service in services.items():
        entrypoint = service.get("entrypoint")
        for argv in ood_monitor_commands(entrypoint, service.get("command")):
            roles[name] = parse_command(argv)
    assert {args.command for args in roles.values()} >= ROLES | {"produce"}
    assert (roles["migrate"].command, roles["migrate"].db_action) == ("db", "upgrade")
    scoring = roles["scoring"]
    assert (scoring.command, scoring.role) == ("run", "scoring"), "the scoring service runs the scoring role only"
    assert "MONITOR_STREAM__WORKERS" in service_environment(services["scoring"])
    assert roles["scheduler"].command == "scheduler" and roles["web"].command == "web"


def test_compose_starts_the_roles_after_the_one_shot_migration():
    services = compose()["services"]
    assert services["migrate"]["restart"] == "no"
    for name in ("scoring", "scheduler", "web"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_compose_configuration_and_secrets_are_what_the_code_reads():
    document = compose()
    image_config = image_environment(containerfile_instructions())["MONITOR_CONFIG"]
    for name, service in ood_monitor_services(document).items():
        config = mounted_config(service, image_config)
        assert config is not None, f"{name}: the configuration is mounted at the image's $MONITOR_CONFIG"
        environment = service_environment(service)
        assert configuration_problems(config.read_text(), environment, str(config)) == [], name


def test_compose_database_password_and_demo_login_agree():
    from monitor.web.auth import read_credentials, verify_secret

    services = compose()["services"]
    postgres = service_environment(services["postgres"])
    secrets = service_environment(services["scoring"])
    url = secrets["MONITOR_STORE__URL"]
    assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/{postgres['POSTGRES_DB']}" in url
    (account,), problems = read_credentials(secrets["MONITOR_WEB__ACCOUNTS"].split(","), "accounts")
    assert problems == []
    assert account.name == "demo" and verify_secret("demo-admin", account.secret_hash)  # the login docs/deploy.md gives


def test_compose_topics_ports_and_volumes_follow_the_configuration():
    document = compose()
    services = document["services"]
    scoring = services["scoring"]
    image_config = image_environment(containerfile_instructions())["MONITOR_CONFIG"]
    settings = settings_of(mounted_config(scoring, image_config).read_text(), service_environment(scoring))
    created = services["topics"]["command"][0]
    for topic in (*settings.kafka.topics, settings.kafka.dead_letter_topic, settings.kafka.alerts_topic):
        assert f" {topic}:" in created, f"topic {topic} is created by the topics service"
    assert all(server.split(":")[0] in services for server in settings.kafka.bootstrap_servers)
    assert settings.store.url.split("@")[1].split(":")[0] in services
    assert services["web"]["ports"] == [f"${{OOD_MONITOR_WEB_PORT:-{settings.web.port}}}:{settings.web.port}"]
    # The producer sends to the consumed topic.
    (producer,) = ood_monitor_commands(services["producer"]["entrypoint"], services["producer"]["command"])
    assert parse_command(producer).topic in settings.kafka.topics
    # Reports: written by the scheduler, served by the web pages, from one volume.
    scheduler_volumes, web_volumes = volume_targets(services["scheduler"]), volume_targets(services["web"])
    assert scheduler_volumes[settings.jobs.report_dir] == web_volumes[settings.jobs.report_dir] == "reports"
    assert settings.model.cache_dir.startswith("/var/cache/ood-monitor")
    assert "/var/cache/ood-monitor" in volume_targets(scoring)


def test_compose_prometheus_scrapes_every_role_on_the_web_port():
    import yaml

    services = compose()["services"]
    prometheus_volumes = volume_targets(services["prometheus"])
    config = yaml.safe_load(compose_path(prometheus_volumes["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert set(discovery["names"]) == {"scoring", "scheduler", "web"}
    image_config = image_environment(containerfile_instructions())["MONITOR_CONFIG"]
    settings = settings_of(mounted_config(services["scoring"], image_config).read_text())
    assert discovery["port"] == settings.web.port
    assert job["metrics_path"] in probe_paths()
    assert compose_path(prometheus_volumes["/etc/prometheus/alerts.yaml"]).is_file()


def test_compose_env_files_are_left_out_of_images():
    for service in compose()["services"].values():
        for env_file in service.get("env_file") or []:
            assert compose_path(env_file).name.endswith(".env")


# --- Kubernetes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_overlays(tmp_path_factory) -> dict[str, Rendered]:
    """Each overlay as shipped, and each with every optional component switched on."""
    out = {}
    for overlay in OVERLAYS:
        out[overlay] = Rendered(render(KUBERNETES / "overlays" / overlay))
        out[f"{overlay}+components"] = Rendered(
            render_with_components(overlay, COMPONENTS, tmp_path_factory.mktemp(overlay)))
    return out


def test_every_overlay_renders_to_manifests_valid_for_kubernetes(rendered_overlays):
    import kubernetes_validate

    for name, rendered in rendered_overlays.items():
        for document in rendered.documents:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(document, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    assert document["kind"] == "ScaledObject", f"{name}: no schema for {document['kind']}"
                except kubernetes_validate.ValidationError as error:
                    raise AssertionError(f"{name}: {document['kind']} {document['metadata']['name']} is not valid "
                                         f"for Kubernetes {version}: {error.message} at {list(error.path)}") from None


def test_kubernetes_validation_fails_on_a_bad_field(rendered_overlays):
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(rendered_overlays["cpu"].one("Deployment", "ood-monitor-scoring"))
    pod_spec(deployment)["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_overlay_has_the_parts_of_a_deployment(rendered_overlays):
    for name, rendered in rendered_overlays.items():
        assert {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service", "PodDisruptionBudget",
                "PersistentVolumeClaim"} <= set(rendered.by_kind), name
        assert {d["metadata"]["name"] for d in rendered.by_kind["Deployment"]} == {
            "ood-monitor-scoring", "ood-monitor-scheduler", "ood-monitor-web"}
        # The database lock elects the one scheduler that runs each job: two replicas lose nothing.
        assert rendered.one("Deployment", "ood-monitor-scheduler")["spec"]["replicas"] == 2
        if name.endswith("+components"):
            assert {"Ingress", "ScaledObject"} <= set(rendered.by_kind)


def test_kubernetes_commands_configuration_and_secrets_are_what_the_code_reads(rendered_overlays):
    for name, rendered in rendered_overlays.items():
        config = rendered.config_text()
        roles = {}
        for workload in rendered.workloads():
            for container in all_containers(workload):
                assert container["image"].split(":")[0].endswith(IMAGE_NAME), container["image"]
                for argv in ood_monitor_commands(container.get("command"), container.get("args")):
                    args = parse_command(argv)
                    if container in pod_spec(workload)["containers"]:
                        roles[workload["metadata"]["name"]] = (args, container)
                environment = container_environment(container, rendered)
                problems = configuration_problems(config, environment, f"{name} ConfigMap")
                assert problems == [], f"{name} {workload['metadata']['name']}/{container['name']}: {problems}"
        migration, _ = roles["ood-monitor-db-upgrade"]
        assert (migration.command, migration.db_action) == ("db", "upgrade")
        scoring, container = roles["ood-monitor-scoring"]
        assert (scoring.command, scoring.role) == ("run", "scoring")
        assert "MONITOR_STREAM__WORKERS" in container_environment(container, rendered)
        assert roles["ood-monitor-scheduler"][0].command == "scheduler"
        assert roles["ood-monitor-web"][0].command == "web"


def test_kubernetes_probes_ports_and_services_match_the_code(rendered_overlays):
    paths = probe_paths()
    for name, rendered in rendered_overlays.items():
        settings = settings_of(rendered.config_text())
        for deployment in rendered.by_kind["Deployment"]:
            (container,) = pod_spec(deployment)["containers"]
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert ports == {"http": settings.web.port}, f"{name}: the port of [web] port"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                http = container[probe]["httpGet"]
                assert http["path"] in paths and http["port"] in ports, f"{name} {probe}"
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/path"] in paths
            assert int(annotations["prometheus.io/port"]) == settings.web.port
        service = rendered.one("Service", "ood-monitor-web")
        web_labels = rendered.one("Deployment", "ood-monitor-web")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= web_labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        for budget in rendered.by_kind["PodDisruptionBudget"]:
            selected = [d for d in rendered.by_kind["Deployment"]
                        if budget["spec"]["selector"]["matchLabels"].items()
                        <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert len(selected) == 1, f"{name}: {budget['metadata']['name']} selects one Deployment"
        if "Ingress" in rendered.by_kind:
            (ingress,) = rendered.by_kind["Ingress"]
            backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
            assert backend == {"name": "ood-monitor-web", "port": {"name": "http"}}


def test_kubernetes_pods_are_non_root_read_only_and_bounded(rendered_overlays):
    image_user = int([i.text for i in final_stage(containerfile_instructions()) if i.keyword == "USER"][0]
                     .split(":")[0])
    for name, rendered in rendered_overlays.items():
        settings = settings_of(rendered.config_text())
        for workload in rendered.workloads():
            spec = pod_spec(workload)
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == image_user
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            for container in all_containers(workload):
                where = f"{name} {workload['metadata']['name']}/{container['name']}"
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                resources = container["resources"]
                assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
                    resources["limits"]), where
                mounts = {mount["mountPath"] for mount in container.get("volumeMounts") or []}
                assert "/tmp" in mounts, where
                if container in spec["containers"] and workload["kind"] == "Deployment":
                    # The writable paths are volumes: caches, the working directory, the reports.
                    for path in (settings.model.cache_dir, "/var/lib/ood-monitor"):
                        assert any(path == m or path.startswith(m + "/") for m in mounts), f"{where}: {path}"
        for name_ in ("ood-monitor-scheduler", "ood-monitor-web"):
            mounts = {m["mountPath"]: m for m in pod_spec(rendered.one("Deployment", name_))["containers"][0]
                      ["volumeMounts"]}
            assert settings.jobs.report_dir in mounts, f"{name} {name_} mounts the shared reports"
        scoring = pod_spec(rendered.one("Deployment", "ood-monitor-scoring"))
        assert scoring["terminationGracePeriodSeconds"] > settings.stream.shutdown_grace_s


def test_gpu_overlay_puts_scoring_on_a_gpu_with_the_cuda_image(rendered_overlays):
    version = project_version()
    for name in ("gpu", "gpu+components"):
        rendered = rendered_overlays[name]
        (container,) = pod_spec(rendered.one("Deployment", "ood-monitor-scoring"))["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["image"] == f"{IMAGE_NAME}:{version}-cuda"
        environment = container_environment(container, rendered)
        assert environment["MONITOR_MODEL__DEVICE"] == "cuda"
        assert settings_of(rendered.config_text(), environment).stream.workers == 2  # two share each GPU
        for other in ("ood-monitor-web", "ood-monitor-scheduler"):
            (container,) = pod_spec(rendered.one("Deployment", other))["containers"]
            assert container["image"] == f"{IMAGE_NAME}:{version}"
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
    for name in ("cpu", "cpu+components"):
        for workload in rendered_overlays[name].workloads():
            for container in all_containers(workload):
                assert container["image"] == f"{IMAGE_NAME}:{version}"
                assert "nvidia.com/gpu" not in container["resources"]["limits"]


# The fields of KEDA's ScaledObject (keda.sh/v1alpha1) and of its Kafka scaler, from KEDA's reference
# (https://keda.sh/docs/2.16/reference/scaledobject-spec/, /scalers/apache-kafka/): the Kubernetes
# schemas do not cover custom resources, so this test checks the fields it uses.
SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KAFKA_SCALER_METADATA = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                         "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset",
                         "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl", "tls"}


def test_keda_scaled_object_scales_the_scoring_group_on_its_lag(rendered_overlays):
    for name in ("cpu+components", "gpu+components"):
        rendered = rendered_overlays[name]
        settings = settings_of(rendered.config_text())
        (scaled,) = rendered.by_kind["ScaledObject"]
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC
        assert spec["scaleTargetRef"]["name"] == "ood-monitor-scoring"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        assert set(metadata) <= KAFKA_SCALER_METADATA
        assert metadata["bootstrapServers"] == ",".join(settings.kafka.bootstrap_servers)
        assert metadata["consumerGroup"] == settings.kafka.group_id
        assert metadata["topic"] in settings.kafka.topics
        assert metadata["offsetResetPolicy"] == settings.kafka.auto_offset_reset
        assert int(metadata["lagThreshold"]) > 0 and metadata["allowIdleConsumers"] == "false"
        # KEDA owns the replica count then.
        assert "replicas" not in rendered.one("Deployment", "ood-monitor-scoring")["spec"]


def test_image_tags_are_the_package_version(rendered_overlays):
    import yaml

    version = project_version()
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text())
        assert {image["newTag"] for image in kustomization["images"]} <= {version, f"{version}-cuda"}
    assert compose()["x-ood-monitor"]["image"] == f"${{OOD_MONITOR_IMAGE:-{IMAGE_NAME}:{version}}}"


def test_kubernetes_secret_example_holds_placeholders_only():
    values = read_env_file(KUBERNETES / "base" / "secrets.example.env", strip_quotes=False)
    assert "CHANGE-ME" in values["MONITOR_STORE__URL"] and "CHANGE-ME" in values["MONITOR_WEB__SESSION_SECRET"]
    assert values["MONITOR_WEB__ACCOUNTS"] == ""
