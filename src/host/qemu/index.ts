export {
  type AnnounceOptions,
  announceSelf,
  cancelMigration,
  continueMigration,
  enableMigrationCapabilities,
  type MigrationCapabilities,
  type MigrationInfo,
  type MigrationParameters,
  type MigrationWaitOptions,
  queryMigration,
  setMigrationParameters,
  startIncoming,
  startMigration,
  waitForMigrationStatus,
} from './live-migration.js';
export {
  escapeOptionValue,
  type QemuDiskSpec,
  type QemuNicSpec,
  type QemuSpec,
  qemuArgs,
} from './qemu-command-line.js';
export { QemuError, QemuErrorCode, QmpError } from './qemu-errors.js';
export {
  type QemuAttachOptions,
  type QemuLaunchOptions,
  type QemuPowerdownOptions,
  QemuProcess,
  type QemuStopOutcome,
} from './qemu-process.js';
export {
  QmpClient,
  type QmpConnectOptions,
  type QmpEvent,
  type QmpExecuteOptions,
  type QmpWaitOptions,
} from './qmp-client.js';
