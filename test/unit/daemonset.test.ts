// daemonset.test.ts: deploy/kubernetes/daemonset.yaml parses, holds the settings docs/security.md
// and docs/deploy.md give (host PID namespace, exactly CAP_SYS_ADMIN and CAP_SYS_PTRACE, not
// privileged, /sys/kernel/btf read-only, a memory limit above the measured RSS, a readiness
// check on the --ready-file the args name), and its translation into `podman run` options
// (test/lib/daemonset.ts), which test/kernel/container.test.ts runs, carries each of them: the
// podman test and the DaemonSet cannot drift apart.
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { bytes, daemonSetPod, podmanRun, readManifests } from '../lib/daemonset';

describe('deploy/kubernetes/daemonset.yaml (yaml parser, no kernel)', () => {
  it('is a Namespace and a DaemonSet in it, with one container', () => {
    const docs = readManifests();
    assert.deepStrictEqual(docs.map((d) => d.kind), ['Namespace', 'DaemonSet']);
    assert.strictEqual(docs[1]!.metadata.namespace, docs[0]!.metadata.name);
    assert.strictEqual(daemonSetPod().containers.length, 1);
  });

  it('runs in the host PID namespace, as root with exactly the two capabilities of docs/security.md, not privileged', () => {
    const pod = daemonSetPod();
    assert.strictEqual(pod.hostPID, true);
    assert.notStrictEqual(pod.hostNetwork, true, 'the helper opens no socket: no host network');
    const sc = pod.containers[0]!.securityContext;
    assert.strictEqual(sc.privileged, false);
    assert.deepStrictEqual(sc.capabilities, { drop: ['ALL'], add: ['SYS_ADMIN', 'SYS_PTRACE'] });
    assert.strictEqual(sc.allowPrivilegeEscalation, false);
    assert.strictEqual(sc.readOnlyRootFilesystem, true);
    // the same two capabilities as the systemd unit, which docs/security.md measures
    const unit = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'deploy', 'systemd', 'https-capture.service'), 'utf8');
    assert.match(unit, /^AmbientCapabilities=CAP_SYS_ADMIN CAP_SYS_PTRACE$/m);
  });

  it('mounts /sys/kernel/btf read-only, and no /proc, /sys/kernel/debug or tracefs', () => {
    const pod = daemonSetPod();
    const c = pod.containers[0]!;
    const btf = c.volumeMounts!.find((m) => m.mountPath === '/sys/kernel/btf');
    assert.ok(btf?.readOnly, 'btf read-only');
    assert.strictEqual(pod.volumes!.find((v) => v.name === btf.name)!.hostPath!.path, '/sys/kernel/btf');
    const hostPaths = pod.volumes!.filter((v) => v.hostPath).map((v) => v.hostPath!.path);
    assert.deepStrictEqual(hostPaths, ['/sys/kernel/btf'], 'the only host path');
  });

  it('has a memory limit above the RSS measured in the container and no CPU limit', () => {
    const r = daemonSetPod().containers[0]!.resources!;
    assert.deepStrictEqual(Object.keys(r.limits!), ['memory']);
    // docs/deploy.md: the measured peak of the container's memory cgroup under the podman test,
    // and docs/performance.md's 840 MiB RSS under heavy load
    assert.ok(bytes(r.limits!.memory!) >= 840 * 2 ** 20, r.limits!.memory);
    assert.ok(bytes(r.requests!.memory!) <= bytes(r.limits!.memory!));
  });

  it('is ready when the file --ready-file names exists, on a volume of its own', () => {
    const c = daemonSetPod().containers[0]!;
    const args = c.args!;
    const file = args[args.indexOf('--ready-file') + 1]!;
    assert.ok(args.includes('--ready-file') && file.startsWith('/'), String(args));
    assert.deepStrictEqual(c.readinessProbe!.exec.command, ['test', '-e', file]);
    assert.ok(c.volumeMounts!.some((m) => path.dirname(file) === m.mountPath && !m.readOnly), 'a writable volume holds it (the root is read-only)');
  });

  it('translates into podman run options carrying every one of those settings', () => {
    const run = podmanRun(daemonSetPod());
    assert.deepStrictEqual(run.options, [
      '--pid=host',
      '--network=none',
      '--user=0',
      '--security-opt=no-new-privileges',
      '--read-only',
      '--read-only-tmpfs=false',
      '--cap-drop=all',
      '--cap-add=CAP_SYS_ADMIN',
      '--cap-add=CAP_SYS_PTRACE',
      `--memory=${2 ** 30}`,
      '--volume=/sys/kernel/btf:/sys/kernel/btf:ro',
      `--tmpfs=/run/https-capture:rw,nosuid,nodev,mode=0700,size=${2 ** 20}`,
    ]);
    assert.deepStrictEqual(run.args, ['--format', 'jsonl', '--ready-file', '/run/https-capture/ready']);
    assert.deepStrictEqual(run.readiness, ['test', '-e', '/run/https-capture/ready']);
  });

  it('refuses a setting it does not translate, so a new one cannot be silently left out of the podman test', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'https-capture-ds-'));
    try {
      const file = path.join(dir, 'ds.yaml');
      const text = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'deploy', 'kubernetes', 'daemonset.yaml'), 'utf8');
      fs.writeFileSync(file, text.replace('      hostPID: true\n', '      hostPID: true\n      hostIPC: true\n'));
      assert.throws(() => podmanRun(daemonSetPod(file)), /pod field hostIPC/);
      fs.writeFileSync(file, text.replace('            runAsUser: 0\n', '            runAsUser: 0\n            runAsGroup: 0\n'));
      assert.throws(() => podmanRun(daemonSetPod(file)), /securityContext.runAsGroup/);
      fs.writeFileSync(file, text.replace('              memory: 1Gi\n', '              memory: 1Gi\n              cpu: "1"\n'));
      assert.throws(() => podmanRun(daemonSetPod(file)), /limits.cpu/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
