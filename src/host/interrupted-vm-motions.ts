import type { ExportTable } from './export-table.js';
import type { MoveRecord } from './move-journal.js';
import type { PassThrough } from './pass-through.js';
import { homePath, removeHome } from './vm-home.js';
import { driveVmMotion, type PendingVmMotion, type VmRecoveryHost } from './vm-motion-recovery.js';
import type { VmService } from './vm-service.js';

/**
 * The VMs whose move to another host a restart interrupted, while their QEMU is driven to the
 * end of it (vm-motion-recovery.ts, `driveVmMotion`). Until then such a VM cannot be started,
 * stopped or moved: the drive decides where it runs.
 */
export interface InterruptedVmMotionsHost extends VmRecoveryHost {
  readonly exports: ExportTable;
  readonly vms: VmService;
  serialize<T>(task: () => Promise<T>): Promise<T>;
  /** Stops passing a disk through to the host it moved to (its tombstone goes). */
  forgetPassThrough(entry: PassThrough): Promise<void>;
}

export class InterruptedVmMotions {
  private readonly recovering = new Set<string>();

  constructor(private readonly host: InterruptedVmMotionsHost) {}

  /** Whether VM `vm`'s interrupted move is still being driven. */
  isRecovering(vm: string): boolean {
    return this.recovering.has(vm);
  }

  /**
   * The QEMU side of VM moves a crash interrupted (vm-motion-recovery.ts), in the background:
   * it needs this agent serving the disks, which it does once `open` has returned.
   */
  drive(pending: readonly PendingVmMotion[]): void {
    const vms = this.host.vms;
    for (const motion of pending) {
      const vm = motion.record.vm ?? '';
      this.recovering.add(vm);
      // The VM's QEMU is taken back first; then it is this agent's to drive.
      void vms
        .whenAdopted()
        .then(() =>
          driveVmMotion(
            {
              journal: this.host.journal,
              log: this.host.log,
              datastoreNamed: (name) => this.host.datastoreNamed(name),
              peerNamed: (name) => this.host.peerNamed(name),
              qemuOf: (name) =>
                vms.runtime.isRunning(name) ? vms.runtime.processOf(name) : undefined,
              forgetVm: (record) => this.host.serialize(() => this.forgetMovedVm(record)),
            },
            motion,
          ),
        )
        .catch((error: unknown) => {
          this.host.log.error({ vm, err: error }, `finishing VM ${vm}'s interrupted move failed`);
        })
        .finally(() => this.recovering.delete(vm));
    }
  }

  /** VM `record.vm` runs at the peer now: its home, its record and its disks' pass-throughs go. */
  private async forgetMovedVm(record: MoveRecord): Promise<void> {
    for (const disk of record.disks) {
      const passThrough = this.host.exports.passThrough(disk.disk);
      if (passThrough !== undefined) await this.host.forgetPassThrough(passThrough);
    }
    const vm = this.host.vms.table.get(record.vm ?? '');
    if (vm === undefined) return;
    await removeHome(homePath(vm.datastore, vm.config.name));
    this.host.vms.table.delete(vm.config.name);
  }
}
