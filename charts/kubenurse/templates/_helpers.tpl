{{/*
Names
*/}}
{{- define "kubenurse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenurse.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubenurse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The aggregator's pods get their own app.kubernetes.io/name, so neither the agents'
Service nor the default neighbour_filter (app.kubernetes.io/name=kubenurse) selects them. */}}
{{- define "kubenurse.aggregator.name" -}}
{{- printf "%s-aggregator" (include "kubenurse.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenurse.aggregator.fullname" -}}
{{- printf "%s-aggregator" (include "kubenurse.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenurse.aggregator.headlessName" -}}
{{- printf "%s-grpc" (include "kubenurse.aggregator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace: two releases of the same name in two
namespaces must not share them. */}}
{{- define "kubenurse.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubenurse.fullname" .) -}}
{{- end -}}

{{/*
Labels
*/}}
{{- define "kubenurse.commonLabels" -}}
helm.sh/chart: {{ include "kubenurse.chart" . | quote }}
app.kubernetes.io/part-of: kubenurse
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end -}}

{{- define "kubenurse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubenurse.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "kubenurse.labels" -}}
{{ include "kubenurse.commonLabels" . }}
{{ include "kubenurse.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "kubenurse.aggregator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubenurse.aggregator.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "kubenurse.aggregator.labels" -}}
{{ include "kubenurse.commonLabels" . }}
{{ include "kubenurse.aggregator.selectorLabels" . }}
app.kubernetes.io/component: aggregator
{{- end -}}

{{/*
Service accounts
*/}}
{{- define "kubenurse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubenurse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubenurse.aggregator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "kubenurse.aggregator.fullname" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/*
Images: "repository:tag", the tag defaulting to the chart's appVersion.
Usage: include "kubenurse.image" (dict "image" .Values.daemonset.image "root" .)
*/}}
{{- define "kubenurse.image" -}}
{{- printf "%s:%s" .image.repository (toString (default .root.Chart.AppVersion .image.tag)) -}}
{{- end -}}

{{/*
Booleans given as YAML booleans or as strings (upstream accepted both): "true" or "false".
Usage: include "kubenurse.bool" .Values.insecure
*/}}
{{- define "kubenurse.bool" -}}
{{- if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else -}}
{{- ternary "true" "false" (has (lower (toString .)) (list "true" "t" "1")) -}}
{{- end -}}
{{- end -}}

{{- define "kubenurse.useTls" -}}
{{- include "kubenurse.bool" .Values.use_tls -}}
{{- end -}}

{{- define "kubenurse.ingressEnabled" -}}
{{- include "kubenurse.bool" .Values.ingress.enabled -}}
{{- end -}}

{{- define "kubenurse.aggregatorEnabled" -}}
{{- include "kubenurse.bool" .Values.aggregator.enabled -}}
{{- end -}}

{{- define "kubenurse.watchNodes" -}}
{{- ternary "false" "true" (eq (include "kubenurse.bool" .Values.allow_unschedulable) "true") -}}
{{- end -}}

{{/* A check is on when its value is true; older upstream charts spelled two of them
check_api_me_ingress / check_api_me_service, which are honoured too.
Usage: include "kubenurse.check" (list . "check_me_service" "check_api_me_service") */}}
{{- define "kubenurse.check" -}}
{{- $values := (index . 0).Values -}}
{{- $on := eq (include "kubenurse.bool" (index $values (index . 1))) "true" -}}
{{- if and (gt (len .) 2) (hasKey $values (index . 2)) -}}
{{- $on = and $on (eq (include "kubenurse.bool" (index $values (index . 2))) "true") -}}
{{- end -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* me_ingress needs an Ingress: off whenever ingress.enabled is false. */}}
{{- define "kubenurse.checkMeIngress" -}}
{{- $on := and (eq (include "kubenurse.ingressEnabled" .) "true") (eq (include "kubenurse.check" (list . "check_me_ingress" "check_api_me_ingress")) "true") -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* The UDP echo/loss probe (udp): KUBENURSE_CHECK_UDP, on unless udp.enabled is false. The agents
answer UDP echo on udp.port either way; the Service's and the NetworkPolicy's UDP ports follow
udp.enabled (only what is used is opened). */}}
{{- define "kubenurse.udpEnabled" -}}
{{- $u := default (dict) .Values.udp -}}
{{- $on := or (not (hasKey $u "enabled")) (eq (include "kubenurse.bool" $u.enabled) "true") -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* KUBENURSE_UDP_PORT: the echo port of every agent, and where probes go (8081 unless set). */}}
{{- define "kubenurse.udpPort" -}}
{{- (default (dict) .Values.udp).port | default 8081 | toString -}}
{{- end -}}

{{/* KUBENURSE_UDP_PACKETS: packets per neighbour per round (10 unless set). */}}
{{- define "kubenurse.udpPackets" -}}
{{- (default (dict) .Values.udp).packets | default 10 | toString -}}
{{- end -}}

{{/*
URLs
*/}}
{{- define "kubenurse.serviceUrl" -}}
{{- if .Values.service_url -}}
{{- .Values.service_url -}}
{{- else -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "kubenurse.fullname" .) .Release.Namespace .Values.clusterDomain .Values.service.port -}}
{{- end -}}
{{- end -}}

{{/* The headless Service's DNS name: the host name of the agents' aggregator URL, which the
aggregator's certificate must be valid for when aggregator.tls is on. */}}
{{- define "kubenurse.aggregatorHost" -}}
{{- printf "%s.%s.svc.%s" (include "kubenurse.aggregator.headlessName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "kubenurse.aggregatorUrl" -}}
{{- $scheme := ternary "https" "http" (eq (include "kubenurse.aggregatorTls" .) "true") -}}
{{- printf "%s://%s:%v" $scheme (include "kubenurse.aggregatorHost" .) .Values.aggregator.service.grpcPort -}}
{{- end -}}

{{/* The aggregator's HTTP API (API, merged /alive, /metrics) through its ClusterIP Service, port
aggregator.service.httpPort: the URL of the helm test's `kubenurse-aggregator check --url`. Plain
HTTP whatever aggregator.tls says: that covers the gRPC stream only. */}}
{{- define "kubenurse.aggregatorHttpUrl" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "kubenurse.aggregator.fullname" .) .Release.Namespace .Values.clusterDomain .Values.aggregator.service.httpPort -}}
{{- end -}}

{{/*
TLS of the agents' gRPC stream to the aggregator (aggregator.tls): on with aggregator.tls.enabled
while the aggregator is installed.
*/}}
{{- define "kubenurse.aggregatorTls" -}}
{{- $on := and (eq (include "kubenurse.aggregatorEnabled" .) "true") (eq (include "kubenurse.bool" .Values.aggregator.tls.enabled) "true") -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* Keys of a Secret as read-only files in one directory, and a variable with each file's path:
{volume, mount, env} for a pod template. Only the listed keys are projected.
Usage: fromYaml (include "kubenurse.secretFiles" (dict "name" "vol" "secretName" "s" "dir" "/d"
         "files" (list (dict "env" "VAR" "key" "tls.crt" "path" "tls.crt")))) */}}
{{- define "kubenurse.secretFiles" -}}
{{- $items := list -}}
{{- $env := list -}}
{{- range .files -}}
{{- $items = append $items (dict "key" .key "path" .path) -}}
{{- $env = append $env (dict "name" .env "value" (printf "%s/%s" $.dir .path)) -}}
{{- end -}}
{{- $volume := dict "name" .name "secret" (dict "secretName" .secretName "items" $items) -}}
{{- toYaml (dict "volume" $volume "mount" (dict "name" .name "mountPath" .dir "readOnly" true) "env" $env) -}}
{{- end -}}

{{/* The aggregator's side: tls.crt and tls.key of aggregator.tls.secretName in /etc/kubenurse/tls. */}}
{{- define "kubenurse.aggregatorTls.serverFiles" -}}
{{- $files := list
  (dict "env" "KUBENURSE_AGGREGATOR_TLS_CERT" "key" "tls.crt" "path" "tls.crt")
  (dict "env" "KUBENURSE_AGGREGATOR_TLS_KEY" "key" "tls.key" "path" "tls.key") -}}
{{- include "kubenurse.secretFiles" (dict "name" "aggregator-tls" "secretName" .Values.aggregator.tls.secretName "dir" "/etc/kubenurse/tls" "files" $files) -}}
{{- end -}}

{{/* The agents' side: only the CA key (caSecretName defaults to secretName, which also holds the
aggregator's private key) as /etc/kubenurse/aggregator-ca/ca.crt, whatever the key's name. */}}
{{- define "kubenurse.aggregatorTls.agentFiles" -}}
{{- $tls := .Values.aggregator.tls -}}
{{- $files := list (dict "env" "KUBENURSE_AGGREGATOR_CA" "key" (default "ca.crt" $tls.caKey) "path" "ca.crt") -}}
{{- include "kubenurse.secretFiles" (dict "name" "aggregator-ca" "secretName" (default $tls.secretName $tls.caSecretName) "dir" "/etc/kubenurse/aggregator-ca" "files" $files) -}}
{{- end -}}

{{/*
Authentication of the agents' gRPC stream (aggregator.auth): the mode while the aggregator is
installed ("tokenreview" unless set: "none" only when asked for), "" without the aggregator.
*/}}
{{- define "kubenurse.aggregatorAuth" -}}
{{- if eq (include "kubenurse.aggregatorEnabled" .) "true" -}}
{{- (default (dict) .Values.aggregator.auth).mode | default "tokenreview" | toString -}}
{{- end -}}
{{- end -}}

{{- define "kubenurse.aggregatorAuth.audience" -}}
{{- (default (dict) .Values.aggregator.auth).audience | default "kubenurse-aggregator" | toString -}}
{{- end -}}

{{- define "kubenurse.aggregatorAuth.mtls" -}}
{{- toYaml (default (dict) (default (dict) .Values.aggregator.auth).mtls) -}}
{{- end -}}

{{/* The agents' side, {volume, mount, env} (empty with mode none or without the aggregator):
tokenreview: a projected service-account token for the aggregator's audience, which the kubelet
renews; mtls: the user's volume source with the client certificate (tls.crt, tls.key). */}}
{{- define "kubenurse.aggregatorAuth.agentFiles" -}}
{{- $mode := include "kubenurse.aggregatorAuth" . -}}
{{- if eq $mode "tokenreview" -}}
{{- $auth := default (dict) .Values.aggregator.auth -}}
{{- $dir := "/var/run/secrets/kubenurse/aggregator-token" -}}
{{- $token := dict "audience" (include "kubenurse.aggregatorAuth.audience" .) "expirationSeconds" (int (default 3600 $auth.tokenExpirationSeconds)) "path" "token" -}}
{{- $volume := dict "name" "aggregator-token" "projected" (dict "sources" (list (dict "serviceAccountToken" $token))) -}}
{{- $env := list (dict "name" "KUBENURSE_AGGREGATOR_TOKEN_FILE" "value" (printf "%s/token" $dir)) -}}
{{- toYaml (dict "volume" $volume "mount" (dict "name" "aggregator-token" "mountPath" $dir "readOnly" true) "env" $env) -}}
{{- else if eq $mode "mtls" -}}
{{- $dir := "/etc/kubenurse/aggregator-client" -}}
{{- $volume := merge (dict "name" "aggregator-client") (deepCopy (default (dict) (fromYaml (include "kubenurse.aggregatorAuth.mtls" .)).agentCertVolume)) -}}
{{- $env := list
  (dict "name" "KUBENURSE_AGGREGATOR_CERT" "value" (printf "%s/tls.crt" $dir))
  (dict "name" "KUBENURSE_AGGREGATOR_KEY" "value" (printf "%s/tls.key" $dir)) -}}
{{- toYaml (dict "volume" $volume "mount" (dict "name" "aggregator-client" "mountPath" $dir "readOnly" true) "env" $env) -}}
{{- end -}}
{{- end -}}

{{/* The aggregator's side in mtls mode: the CA that signed the agents' client certificates, key
aggregator.auth.mtls.clientCaKey of clientCaSecretName, as /etc/kubenurse/client-ca/ca.crt. */}}
{{- define "kubenurse.aggregatorAuth.serverFiles" -}}
{{- if eq (include "kubenurse.aggregatorAuth" .) "mtls" -}}
{{- $mtls := fromYaml (include "kubenurse.aggregatorAuth.mtls" .) -}}
{{- $files := list (dict "env" "KUBENURSE_AGGREGATOR_CLIENT_CA" "key" (default "ca.crt" $mtls.clientCaKey) "path" "ca.crt") -}}
{{- include "kubenurse.secretFiles" (dict "name" "aggregator-client-ca" "secretName" $mtls.clientCaSecretName "dir" "/etc/kubenurse/client-ca" "files" $files) -}}
{{- end -}}
{{- end -}}

{{/*
Pushed discovery (aggregator.discovery.enabled, on unless set false): the aggregator watches the
agents' Pods and the Nodes once and pushes every agent its neighbours. "false" without the aggregator.
*/}}
{{- define "kubenurse.aggregatorDiscovery" -}}
{{- $d := default (dict) .Values.aggregator.discovery -}}
{{- $on := or (not (hasKey $d "enabled")) (eq (include "kubenurse.bool" $d.enabled) "true") -}}
{{- ternary "true" "false" (and (eq (include "kubenurse.aggregatorEnabled" .) "true") $on) -}}
{{- end -}}

{{/* The agents' KUBENURSE_DISCOVERY: "" without the aggregator (the agent is upstream's, the
variable unset); "local" when the aggregator pushes nothing; else discovery.mode ("auto" unless set). */}}
{{- define "kubenurse.discoveryMode" -}}
{{- if eq (include "kubenurse.aggregatorEnabled" .) "true" -}}
{{- if eq (include "kubenurse.aggregatorDiscovery" .) "true" -}}
{{- (default (dict) .Values.discovery).mode | default "auto" | toString -}}
{{- else -}}
local
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubenurse.discoveryFallbackAfter" -}}
{{- (default (dict) .Values.discovery).fallbackAfter | default "60s" | toString -}}
{{- end -}}

{{/* The variables both tiers read to agree on who checks whom, from the same values: the agents'
env, and the aggregator's with pushed discovery. Both run in the release namespace, so the
downward API gives both the agents' namespace. */}}
{{- define "kubenurse.neighbourEnv" -}}
- name: KUBENURSE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: KUBENURSE_NEIGHBOUR_FILTER
  value: {{ .Values.neighbour_filter | toString | quote }}
- name: KUBENURSE_NEIGHBOUR_LIMIT
  value: {{ .Values.neighbour_limit | toString | quote }}
- name: KUBENURSE_ALLOW_UNSCHEDULABLE
  value: {{ include "kubenurse.bool" .Values.allow_unschedulable | quote }}
{{- end -}}

{{/*
The helm test (templates/tests/check-pod.yaml): on with helmTest.enabled (true unless set false)
while the aggregator is installed, since it asks the aggregator.
*/}}
{{- define "kubenurse.helmTestEnabled" -}}
{{- $t := default (dict) .Values.helmTest -}}
{{- $on := or (not (hasKey $t "enabled")) (eq (include "kubenurse.bool" $t.enabled) "true") -}}
{{- ternary "true" "false" (and (eq (include "kubenurse.aggregatorEnabled" .) "true") $on) -}}
{{- end -}}

{{/* The test Pod's own app.kubernetes.io/name: neither tier's selectors, Services, PDB nor the
default neighbour_filter (app.kubernetes.io/name=kubenurse) pick it up. */}}
{{- define "kubenurse.helmTest.name" -}}
{{- printf "%s-check" (include "kubenurse.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenurse.helmTest.fullname" -}}
{{- printf "%s-check" (include "kubenurse.aggregator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubenurse.helmTest.labels" -}}
{{ include "kubenurse.commonLabels" . }}
app.kubernetes.io/name: {{ include "kubenurse.helmTest.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{/* The aggregator's service-account token: TokenReview, pushed discovery and node conditions
need the API server. */}}
{{- define "kubenurse.aggregator.needsApi" -}}
{{- $on := or (eq (include "kubenurse.aggregator.needsRbac" .) "true") (ne (include "kubenurse.aggregatorNodeConditions" .) "off") -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* aggregator-rbac.yaml: TokenReview and pushed discovery (node conditions have their own,
aggregator-node-conditions-rbac.yaml). */}}
{{- define "kubenurse.aggregator.needsRbac" -}}
{{- $on := or (eq (include "kubenurse.aggregatorAuth" .) "tokenreview") (eq (include "kubenurse.aggregatorDiscovery" .) "true") -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* KUBENURSE_AGGREGATOR_NODE_CONDITIONS: aggregator.nodeConditions.mode as given ("off" when
unset, or without the aggregator); kubenurse.validate rejects anything but off, dry-run, on
(a YAML boolean from an unquoted on/off included). */}}
{{- define "kubenurse.aggregatorNodeConditions" -}}
{{- $nc := default (dict) .Values.aggregator.nodeConditions -}}
{{- if and (eq (include "kubenurse.aggregatorEnabled" .) "true") (hasKey $nc "mode") (not (kindIs "invalid" $nc.mode)) -}}
{{- toString $nc.mode -}}
{{- else -}}
off
{{- end -}}
{{- end -}}

{{- define "kubenurse.aggregatorNodeConditions.maxShare" -}}
{{- $nc := default (dict) .Values.aggregator.nodeConditions -}}
{{- if kindIs "invalid" $nc.maxShare }}0.1{{ else }}{{ toString $nc.maxShare }}{{ end -}}
{{- end -}}

{{- define "kubenurse.aggregatorNodeConditions.minHold" -}}
{{- (default (dict) .Values.aggregator.nodeConditions).minHold | default "5m" | toString -}}
{{- end -}}

{{/* The Lease the aggregator's replicas elect the node-condition writer by, in the release
namespace: a fixed name in the aggregator (LEASE_NAME, aggregator/src/conditions/lease.rs). */}}
{{- define "kubenurse.aggregatorNodeConditions.lease" -}}
kubenurse-aggregator-node-conditions
{{- end -}}

{{/* reportingController of the aggregator's Events (CONTROLLER, aggregator/src/conditions/mod.rs). */}}
{{- define "kubenurse.aggregatorNodeConditions.controller" -}}
kubenurse-aggregator
{{- end -}}

{{- define "kubenurse.aggregator.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubenurse.aggregator.fullname" .) -}}
{{- end -}}

{{/* The chart's labels plus extra ones; the chart's win (selectors and neighbour_filter rely on them).
Usage: include "kubenurse.mergeLabels" (dict "labels" (include "kubenurse.labels" .) "extra" .Values.daemonset.podLabels) */}}
{{- define "kubenurse.mergeLabels" -}}
{{- toYaml (merge (fromYaml .labels) (default (dict) .extra)) -}}
{{- end -}}

{{/* An HTTP probe on the container port named http; settings (periods, thresholds) from values.
Usage: include "kubenurse.probe" (dict "path" "/ready" "settings" .Values.daemonset.readinessProbe) */}}
{{- define "kubenurse.probe" -}}
{{- $get := dict "httpGet" (dict "path" .path "port" "http" "scheme" "HTTP") -}}
{{- toYaml (merge $get (default (dict) .settings)) -}}
{{- end -}}

{{/*
Pod scheduling shared by both tiers: priorityClassName, nodeSelector, affinity, tolerations.
Usage: include "kubenurse.scheduling" .Values.daemonset
*/}}
{{- define "kubenurse.scheduling" -}}
{{- $s := dict -}}
{{- range $key := list "priorityClassName" "nodeSelector" "affinity" "tolerations" -}}
{{- with index $ $key }}{{ $_ := set $s $key . }}{{ end -}}
{{- end -}}
{{- if $s }}{{ toYaml $s }}{{ end -}}
{{- end -}}

{{/*
Checks of combinations the schema cannot express; included once, by daemonset.yaml (which is
always rendered), so a bad combination fails the whole release with this message.
*/}}
{{- define "kubenurse.validate" -}}
{{- if eq (include "kubenurse.useTls" .) "true" -}}
{{- if or (not .Values.cert_file) (not .Values.cert_key) -}}
{{- fail "use_tls: true needs cert_file and cert_key (paths inside the container; mount the certificate with daemonset.volumes and daemonset.volumeMounts)" -}}
{{- end -}}
{{- end -}}
{{- if and (eq (include "kubenurse.ingressEnabled" .) "true") (not .Values.ingress.url) -}}
{{- fail "ingress.enabled: true needs ingress.url (the host name of the Ingress)" -}}
{{- end -}}
{{- if and (eq (include "kubenurse.aggregatorTls" .) "true") (not .Values.aggregator.tls.secretName) -}}
{{- fail (printf "aggregator.tls.enabled: true needs aggregator.tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key, the certificate valid for %s)" (include "kubenurse.aggregatorHost" .)) -}}
{{- end -}}
{{- if eq (include "kubenurse.aggregatorAuth" .) "mtls" -}}
{{- $mtls := fromYaml (include "kubenurse.aggregatorAuth.mtls" .) -}}
{{- if ne (include "kubenurse.aggregatorTls" .) "true" -}}
{{- fail "aggregator.auth.mode: mtls needs aggregator.tls.enabled: true and aggregator.tls.secretName (the agents present their client certificates in the aggregator's TLS handshake)" -}}
{{- end -}}
{{- if not $mtls.clientCaSecretName -}}
{{- fail (printf "aggregator.auth.mode: mtls needs aggregator.auth.mtls.clientCaSecretName (a Secret whose key %s holds the CA, PEM, that signed the agents' client certificates)" (default "ca.crt" $mtls.clientCaKey)) -}}
{{- end -}}
{{- if not $mtls.agentCertVolume -}}
{{- fail "aggregator.auth.mode: mtls needs aggregator.auth.mtls.agentCertVolume (a volume source, e.g. csi: {driver: csi.cert-manager.io, ...}, giving each agent tls.crt and tls.key of its client certificate)" -}}
{{- end -}}
{{- if hasKey $mtls.agentCertVolume "name" -}}
{{- fail "aggregator.auth.mtls.agentCertVolume is a volume source without a name (the chart names the volume aggregator-client): drop its name key" -}}
{{- end -}}
{{- end -}}
{{- /* values.schema.json rejects these too; kept for renders that skip the schema. */ -}}
{{- $nodeConditions := include "kubenurse.aggregatorNodeConditions" . -}}
{{- if not (has $nodeConditions (list "off" "dry-run" "on")) -}}
{{- fail (printf "aggregator.nodeConditions.mode must be \"off\", \"dry-run\" or \"on\", not %s (quote it: YAML reads a bare on/off as a boolean)" $nodeConditions) -}}
{{- end -}}
{{- if and (eq (include "kubenurse.aggregatorEnabled" .) "true") (ne (include "kubenurse.aggregatorDiscovery" .) "true") (eq (toString (default (dict) .Values.discovery).mode) "aggregator") -}}
{{- fail "discovery.mode: aggregator needs aggregator.discovery.enabled: true (with it off nothing pushes the agents their neighbours); use discovery.mode auto or local" -}}
{{- end -}}
{{- end -}}
