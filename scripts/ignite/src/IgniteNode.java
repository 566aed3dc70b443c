/*
 * One Apache Ignite 2 server node on loopback for the analytics result cache, configured in code
 * (ignite-spring, which reads XML configurations, is not served for 2.18). Started by
 * scripts/ignite-server; every setting comes from a system property:
 *
 *   ignite.discoveryPort      TCP discovery port (the only address of the static IP finder)
 *   ignite.communicationPort  TCP communication port
 *   ignite.clientPort         thin-client (binary protocol) port
 *   ignite.workDir            work directory (marshaller mappings, logs)
 *   ignite.cacheRegionMb      size of the "analytics-cache" data region: the bound on what the
 *                             result cache holds; past 90% full Ignite evicts entries (RANDOM_2_LRU)
 *
 * No persistence: the result cache is rebuilt from queries, so a restarted node starts empty.
 * Prints "IGNITE-NODE-READY" once the node has joined its (one-node) topology.
 */
import java.util.Collections;

import org.apache.ignite.Ignite;
import org.apache.ignite.Ignition;
import org.apache.ignite.configuration.ClientConnectorConfiguration;
import org.apache.ignite.configuration.DataPageEvictionMode;
import org.apache.ignite.configuration.DataRegionConfiguration;
import org.apache.ignite.configuration.DataStorageConfiguration;
import org.apache.ignite.configuration.IgniteConfiguration;
import org.apache.ignite.logger.java.JavaLogger;
import org.apache.ignite.spi.communication.tcp.TcpCommunicationSpi;
import org.apache.ignite.spi.discovery.tcp.TcpDiscoverySpi;
import org.apache.ignite.spi.discovery.tcp.ipfinder.vm.TcpDiscoveryVmIpFinder;

public final class IgniteNode {
    private static final String HOST = "127.0.0.1";

    private static int port(String name) {
        String value = System.getProperty(name);
        if (value == null) {
            throw new IllegalArgumentException("system property " + name + " is required");
        }
        return Integer.parseInt(value);
    }

    public static void main(String[] args) {
        int discoveryPort = port("ignite.discoveryPort");
        int communicationPort = port("ignite.communicationPort");
        int clientPort = port("ignite.clientPort");
        long regionBytes = Long.getLong("ignite.cacheRegionMb", 256L) * 1024 * 1024;

        TcpDiscoveryVmIpFinder ipFinder = new TcpDiscoveryVmIpFinder();
        ipFinder.setAddresses(Collections.singletonList(HOST + ":" + discoveryPort));
        TcpDiscoverySpi discovery = new TcpDiscoverySpi();
        discovery.setLocalAddress(HOST);
        discovery.setLocalPort(discoveryPort);
        discovery.setLocalPortRange(0);
        discovery.setIpFinder(ipFinder);

        TcpCommunicationSpi communication = new TcpCommunicationSpi();
        communication.setLocalAddress(HOST);
        communication.setLocalPort(communicationPort);
        communication.setLocalPortRange(0);

        ClientConnectorConfiguration connector = new ClientConnectorConfiguration();
        connector.setHost(HOST);
        connector.setPort(clientPort);
        connector.setPortRange(0);

        // The result cache's own region, bounded: Ignite evicts pages when it is 90% full.
        DataRegionConfiguration cacheRegion = new DataRegionConfiguration();
        cacheRegion.setName("analytics-cache");
        cacheRegion.setInitialSize(Math.min(regionBytes, 64L * 1024 * 1024));
        cacheRegion.setMaxSize(regionBytes);
        cacheRegion.setPageEvictionMode(DataPageEvictionMode.RANDOM_2_LRU);
        DataRegionConfiguration defaultRegion = new DataRegionConfiguration();
        defaultRegion.setName("default");
        defaultRegion.setInitialSize(32L * 1024 * 1024);
        defaultRegion.setMaxSize(64L * 1024 * 1024);
        defaultRegion.setPageEvictionMode(DataPageEvictionMode.RANDOM_2_LRU);
        DataStorageConfiguration storage = new DataStorageConfiguration();
        storage.setDefaultDataRegionConfiguration(defaultRegion);
        storage.setDataRegionConfigurations(cacheRegion);

        IgniteConfiguration config = new IgniteConfiguration();
        config.setIgniteInstanceName("analytics-cache");
        config.setLocalHost(HOST);
        config.setWorkDirectory(System.getProperty("ignite.workDir"));
        config.setDiscoverySpi(discovery);
        config.setCommunicationSpi(communication);
        config.setClientConnectorConfiguration(connector);
        config.setDataStorageConfiguration(storage);
        config.setMetricsLogFrequency(0);
        config.setGridLogger(new JavaLogger());

        Ignite ignite = Ignition.start(config);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> Ignition.stop(ignite.name(), true)));
        System.out.println("IGNITE-NODE-READY thin-client " + HOST + ":" + clientPort);
        System.out.flush();
    }
}
