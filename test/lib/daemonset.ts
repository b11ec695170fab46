// daemonset.ts: deploy/kubernetes/daemonset.yaml read with the `yaml` package, and its
// container's settings translated into a `podman run` command line, so the podman test runs
// exactly what the DaemonSet says (test/kernel/container.test.ts) and a unit test checks both
// (test/unit/daemonset.test.ts). Only the fields the manifest uses are translated; any other
// field of the pod or container spec is an error here, so a new setting cannot be ignored.
import * as fs from 'fs';
import * as path from 'path';
import { parseAllDocuments } from 'yaml';

export interface Mount {
  name: string;
  mountPath: string;
  readOnly?: boolean;
}
export interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: { medium?: string; sizeLimit?: string };
}
export interface Container {
  name: string;
  image: string;
  imagePullPolicy?: string;
  command?: string[];
  args?: string[];
  securityContext: {
    runAsUser?: number;
    privileged?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { drop?: string[]; add?: string[] };
    seccompProfile?: { type: string };
  };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  readinessProbe?: { exec: { command: string[] }; initialDelaySeconds?: number; periodSeconds?: number };
  volumeMounts?: Mount[];
}
export interface PodSpec {
  hostPID?: boolean;
  hostNetwork?: boolean;
  automountServiceAccountToken?: boolean;
  enableServiceLinks?: boolean;
  tolerations?: unknown[];
  terminationGracePeriodSeconds?: number;
  containers: Container[];
  volumes?: Volume[];
}
export interface Manifest {
  kind: string;
  metadata: { name: string; namespace?: string };
  spec?: { template?: { spec: PodSpec } };
}

export const DAEMONSET_FILE = path.resolve(__dirname, '..', '..', '..', 'deploy', 'kubernetes', 'daemonset.yaml');

/** Every document of a manifest file, parsed strictly (a YAML error throws). */
export function readManifests(file = DAEMONSET_FILE): Manifest[] {
  return parseAllDocuments(fs.readFileSync(file, 'utf8')).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as Manifest;
  });
}

/** The pod spec of the DaemonSet in the file. */
export function daemonSetPod(file = DAEMONSET_FILE): PodSpec {
  const ds = readManifests(file).filter((m) => m.kind === 'DaemonSet');
  if (ds.length !== 1 || !ds[0]!.spec?.template) throw new Error(`${file}: expected one DaemonSet with a pod template`);
  return ds[0]!.spec.template.spec;
}

/** Kubernetes quantities (Mi, Gi, M, plain bytes) in bytes. */
export function bytes(q: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|k|M|G)?$/.exec(q);
  if (!m) throw new Error(`unsupported quantity ${q}`);
  const unit = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1e3, M: 1e6, G: 1e9 }[m[2] ?? ''] ?? 1;
  return Number(m[1]) * unit;
}

const POD_FIELDS = new Set(['hostPID', 'hostNetwork', 'automountServiceAccountToken', 'enableServiceLinks', 'tolerations', 'terminationGracePeriodSeconds', 'containers', 'volumes']);
const CONTAINER_FIELDS = new Set(['name', 'image', 'imagePullPolicy', 'command', 'args', 'securityContext', 'resources', 'readinessProbe', 'volumeMounts']);
const SECURITY_FIELDS = new Set(['runAsUser', 'privileged', 'allowPrivilegeEscalation', 'readOnlyRootFilesystem', 'capabilities', 'seccompProfile']);

export interface PodmanRun {
  /** Options of `podman run`, before the image. */
  options: string[];
  /** The command after the image (the container's args; --entrypoint carries `command`). */
  args: string[];
  /** The readiness probe's command, for `podman exec`. */
  readiness?: string[];
}

/**
 * `podman run` options equivalent to the pod's one container. Kubernetes details with no podman
 * counterpart that matters to a single container on one host (tolerations, service account,
 * service links, requests, the probe's timing, the grace period) are left out on purpose.
 */
export function podmanRun(pod: PodSpec): PodmanRun {
  for (const k of Object.keys(pod)) if (!POD_FIELDS.has(k)) throw new Error(`daemonset.ts does not translate pod field ${k}: add it`);
  if (pod.containers.length !== 1) throw new Error('daemonset.ts translates a pod of one container');
  const c = pod.containers[0]!;
  for (const k of Object.keys(c)) if (!CONTAINER_FIELDS.has(k)) throw new Error(`daemonset.ts does not translate container field ${k}: add it`);
  for (const k of Object.keys(c.securityContext)) if (!SECURITY_FIELDS.has(k)) throw new Error(`daemonset.ts does not translate securityContext.${k}: add it`);
  const o: string[] = [];
  if (pod.hostPID) o.push('--pid=host');
  // A pod without hostNetwork has a network namespace of its own; the helper needs none, so
  // podman's closest match is a namespace with loopback only.
  o.push(pod.hostNetwork ? '--network=host' : '--network=none');
  const sc = c.securityContext;
  if (sc.privileged) o.push('--privileged');
  if (sc.runAsUser !== undefined) o.push(`--user=${sc.runAsUser}`);
  if (sc.allowPrivilegeEscalation === false) o.push('--security-opt=no-new-privileges');
  if (sc.readOnlyRootFilesystem) o.push('--read-only', '--read-only-tmpfs=false');
  for (const cap of sc.capabilities?.drop ?? []) o.push(`--cap-drop=${cap === 'ALL' ? 'all' : `CAP_${cap}`}`);
  for (const cap of sc.capabilities?.add ?? []) o.push(`--cap-add=CAP_${cap}`);
  const seccomp = sc.seccompProfile?.type ?? 'RuntimeDefault';
  if (seccomp === 'Unconfined') o.push('--security-opt=seccomp=unconfined');
  else if (seccomp !== 'RuntimeDefault') throw new Error(`seccompProfile ${seccomp}: not translated`);
  const limits = c.resources?.limits ?? {};
  for (const k of Object.keys(limits)) if (k !== 'memory') throw new Error(`resources.limits.${k}: not translated`);
  if (limits.memory) o.push(`--memory=${bytes(limits.memory)}`);
  const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
  for (const m of c.volumeMounts ?? []) {
    const v = volumes.get(m.name);
    if (!v) throw new Error(`volumeMount ${m.name} has no volume`);
    if (v.hostPath) o.push(`--volume=${v.hostPath.path}:${m.mountPath}:${m.readOnly ? 'ro' : 'rw'}`);
    else if (v.emptyDir) o.push(`--tmpfs=${m.mountPath}:rw,nosuid,nodev,mode=0700${v.emptyDir.sizeLimit ? `,size=${bytes(v.emptyDir.sizeLimit)}` : ''}`);
    else throw new Error(`volume ${v.name}: only hostPath and emptyDir are translated`);
  }
  if (c.command?.length) o.push(`--entrypoint=${JSON.stringify(c.command)}`);
  return { options: o, args: c.args ?? [], ...(c.readinessProbe ? { readiness: c.readinessProbe.exec.command } : {}) };
}
