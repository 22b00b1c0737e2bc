export { findAssetDirectory, registerDashboardRoutes } from './dashboard-routes.js';
