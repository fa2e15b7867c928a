# Pushes migration jobs exactly as Atmosphere's VmtMigrator does (Sidekiq client, redis-namespace).
#
#   ruby push.rb --redis URL [--namespace atmosphere] --site SOURCE_SITE \
#                [--technology openstack|aws] IMAGE_UUID DEST_SITE [IMAGE_UUID DEST_SITE ...]
#
# Prints one jid per pushed job. Atmosphere's code, for reference:
#   Sidekiq::Client.push('queue' => "migration_#{@source_compute_site.site_id}",
#                        'class' => migrator_class,
#                        'args' => [@virtual_machine_template.id_at_site,
#                                   @destination_compute_site.site_id])
require "optparse"
require "sidekiq"
require "redis-namespace"

# Atmosphere requires these from 'migratio/worker/*': Sidekiq worker classes whose code runs elsewhere.
module Migratio
  module Worker
    class OpenstackOpenstackMigrator
      include Sidekiq::Worker
    end

    class OpenstackAmazonMigrator
      include Sidekiq::Worker
    end
  end
end

options = {namespace: "atmosphere", technology: "openstack"}
OptionParser.new do |o|
  o.on("--redis URL") { |v| options[:redis] = v }
  o.on("--namespace NS") { |v| options[:namespace] = v }
  o.on("--site SITE") { |v| options[:site] = v }
  o.on("--technology TECH") { |v| options[:technology] = v }
end.parse!

abort "usage: push.rb --redis URL --site SITE IMAGE DEST [IMAGE DEST ...]" unless
  options[:redis] && options[:site] && !ARGV.empty? && ARGV.size.even?

Sidekiq.configure_client do |config|
  redis = {url: options[:redis], size: 1}
  redis[:namespace] = options[:namespace] unless options[:namespace].empty?
  config.redis = redis
end

migrator_class =
  case options[:technology]
  when "aws" then Migratio::Worker::OpenstackAmazonMigrator
  when "openstack" then Migratio::Worker::OpenstackOpenstackMigrator
  else abort "unknown technology #{options[:technology]}"
  end

ARGV.each_slice(2) do |image_uuid, dest_site_id|
  jid = Sidekiq::Client.push(
    "queue" => "migration_#{options[:site]}",
    "class" => migrator_class,
    "args" => [image_uuid, dest_site_id]
  )
  puts jid
end
